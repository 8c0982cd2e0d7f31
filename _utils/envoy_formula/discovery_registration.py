"""
This host's registrations with the discovery service (Lyft's v1 API): one per service manifest
with an ingress, at this host's address and the ingress port, with az/region/instance_id tags.
``register`` doubles as the heartbeat the minion's schedule repeats.
"""

import hashlib
import json
import os
import re

from .errors import EnvoyFormulaError


def base_url(host):
    url = host["discovery"]["url"]
    if not url:
        raise EnvoyFormulaError("envoy:discovery:address (or envoy:discovery:url) is not set: nowhere to register")
    return url.rstrip("/")


def host_ip(register, grains):
    if register.get("ip"):
        return str(register["ip"])
    for ip in list(grains.get("fqdn_ip4") or []) + list(grains.get("ipv4") or []):
        if not ip.startswith("127.") and ip != "0.0.0.0":
            return ip
    raise EnvoyFormulaError(
        "envoy:discovery:register:ip is not set and no grain (fqdn_ip4, ipv4) has a non-loopback address")


CLOUD_ZONE = re.compile(r"^([a-z]+(?:-[a-z]+)*-?\d+)(?:[a-z]|-[a-z])$")


def region_of(az):
    """The region a zone name implies, where it follows the cloud convention of a region plus a
    zone letter (AWS us-east-1a, GCP europe-west1-b); any other zone is its own region."""
    match = CLOUD_ZONE.match(az)
    return match.group(1) if match else az


def tags(register, grains):
    """az, region, instance_id: pillar ``register:tags`` first, then grains, then derived."""
    out = dict(register.get("tags") or {})
    out.setdefault("az", grains.get("az") or grains.get("zone"))
    if not out["az"]:
        raise EnvoyFormulaError("envoy:discovery:register:tags:az is not set (nor an `az` or `zone` grain)")
    out.setdefault("region", grains.get("region") or region_of(str(out["az"])))
    out.setdefault("instance_id", grains.get("instance_id") or grains.get("id"))
    return out


def read_manifests(manifest_dir):
    """[(path, data, digest)] of every ``*.yaml`` manifest, plus the problems of unreadable ones."""
    import yaml

    found, problems = [], []
    if not os.path.isdir(manifest_dir):
        return found, problems
    for name in sorted(os.listdir(manifest_dir)):
        if not name.endswith((".yaml", ".yml")) or name.startswith("."):
            continue
        path = os.path.join(manifest_dir, name)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
            data = yaml.safe_load(raw)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: unreadable manifest ({exc})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("service"), str):
            problems.append(f"{path}: service: missing (a manifest names its service)")
            continue
        found.append((path, data, hashlib.sha256(raw).hexdigest()[:12]))
    return found, problems


def plan(host, grains):
    """(registrations, problems): one entry per manifest with an ingress."""
    register = host["discovery"]["register"]
    manifests, problems = read_manifests(host["manifest_dir"])
    serving = []
    for path, data, digest in manifests:
        ingress = data.get("ingress")
        if not ingress:
            continue  # a client-only service: nothing to find it by
        port = ingress.get("port") if isinstance(ingress, dict) else None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            problems.append(f"{path}: ingress.port: missing or not a port")
            continue
        serving.append({"service": data["service"], "port": port, "manifest": path,
                        # Without a pillar revision, the manifest's digest: it changes when the deploy does.
                        "revision": str(register.get("revision") or digest)})
    if serving:
        ip, host_tags = host_ip(register, grains), tags(register, grains)
        for entry in serving:
            entry.update(ip=ip, tags=host_tags)
    return serving, problems


def endpoint(entry):
    return f"[{entry['ip']}]:{entry['port']}" if ":" in entry["ip"] else f"{entry['ip']}:{entry['port']}"


def _error_text(resp):
    try:
        return resp.json().get("error") or resp.text
    except ValueError:
        return resp.text.strip()[:200]


def _work(host, grains):
    """(url, registrations, problems, timeout) for one round of calls."""
    entries, problems = plan(host, grains)
    return base_url(host), entries, problems, float(host["discovery"]["register"]["timeout"])


def _for_each(host, grains, action, outcome, send, ok_statuses):
    """``send(session, url, entry, timeout)`` for every registration, trying all of them; raises
    naming each one that failed, else returns ``{outcome: [...], "url": url}``."""
    import requests

    url, entries, problems, timeout = _work(host, grains)
    done = []
    with requests.Session() as session:
        for entry in entries:
            target = f"{entry['service']} {endpoint(entry)}"
            try:
                resp = send(session, url, entry, timeout)
            except requests.RequestException as exc:
                problems.append(f"{target}: discovery service unreachable at {url} ({exc.__class__.__name__})")
                continue
            if resp.status_code not in ok_statuses:
                problems.append(f"{target}: refused with HTTP {resp.status_code}: {_error_text(resp)}")
                continue
            done.append(target)
    if problems:
        raise EnvoyFormulaError(f"envoy.{action}: " + "; ".join(problems), info={outcome: done, "problems": problems})
    return {outcome: done, "url": url}


def register(host, grains):
    def post(session, url, entry, timeout):
        form = {"ip": entry["ip"], "port": str(entry["port"]), "revision": entry["revision"],
                "service_repo_name": entry["service"], "tags": json.dumps(entry["tags"], sort_keys=True)}
        return session.post(f"{url}/v1/registration/{entry['service']}", data=form, timeout=timeout)

    return _for_each(host, grains, "register", "registered", post, ok_statuses=(200,))


def deregister(host, grains):
    def delete(session, url, entry, timeout):
        return session.delete(f"{url}/v1/registration/{entry['service']}/{endpoint(entry)}", timeout=timeout)

    return _for_each(host, grains, "deregister", "deregistered", delete, ok_statuses=(200, 404))


def status(host, grains):
    """For each registration: listed by the discovery service at this ip:port, and ``current``
    (same revision and tags)?"""
    import requests

    url, entries, problems, timeout = _work(host, grains)
    out = []
    with requests.Session() as session:
        for entry in entries:
            try:
                resp = session.get(f"{url}/v1/registration/{entry['service']}", timeout=timeout)
                resp.raise_for_status()
                listed = resp.json().get("hosts", [])
            except (requests.RequestException, ValueError) as exc:
                raise EnvoyFormulaError(
                    f"{entry['service']}: cannot list hosts at {url} ({exc.__class__.__name__}: {exc})") from exc
            mine = next((h for h in listed if h.get("ip_address") == entry["ip"] and h.get("port") == entry["port"]),
                        None)
            out.append({**entry, "listed": mine is not None, "last_check_in": (mine or {}).get("last_check_in"),
                        "current": bool(mine) and mine.get("revision") == entry["revision"]
                        and mine.get("tags") == entry["tags"]})
    return {"services": out, "problems": problems, "url": url}
