"""
This host's registrations with the discovery service (Lyft's v1 API): one per service manifest
with an ingress, at this host's address and the ingress port, with az/region/instance_id tags.
``register`` doubles as the heartbeat the minion's schedule repeats.

Several instances (``envoy:discovery:address`` or ``url`` as a list) share one store, so any one
that answers will do: each call tries them in an order of its own per host (spreading the fleet),
moving on when one cannot be reached or answers 5xx. A registration carries this host's token
(``envoy:discovery:auth``, a 0600 file written by ``discovery_credentials``) and leaves from the
address it registers, which is what a server with ``--auth`` checks.
"""

import hashlib
import json
import os
import re
import socket

from . import discovery_tokens
from .errors import EnvoyFormulaError

CONNECT_TIMEOUT_S = 2.0  # a dead instance costs this much before the next one is tried


def base_urls(host):
    urls = host["discovery"].get("urls") or []
    if not urls:
        raise EnvoyFormulaError("envoy:discovery:address (or envoy:discovery:url) is not set: nowhere to register")
    return list(urls)


def instance_order(urls, ip):
    """``urls`` rotated by a digest of this host's address: the same order on every call from a
    host (its connections stay warm), a different first instance across a fleet."""
    start = int(hashlib.sha256(str(ip).encode()).hexdigest(), 16) % len(urls)
    return urls[start:] + urls[:start]


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


def read_token(host):
    """This host's registration token, or None when it has none."""
    path = host["discovery"]["auth"]["token_file"]
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EnvoyFormulaError(f"cannot read the registration token {path}: {exc.strerror}") from None


def token_hint(token, entry):
    """Why a server may have refused ``entry``, from what this host's own token says."""
    if token is None:
        return "this host has no registration token (envoy:discovery:auth:token from the master's ext_pillar)"
    try:
        claims = discovery_tokens.read_claims(token)
    except discovery_tokens.TokenError as exc:
        return f"this host's token is unusable: {exc}"
    return (f"this host's token is for minion {claims['sub']}, services {claims['svc'] or 'none'}, "
            f"addresses {claims['ips'] or 'none'}")


def is_local_address(ip):
    """Whether this host can send from ``ip`` (it is one of its addresses)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
        return True
    except OSError:
        return False


def session_from(ip):
    """A requests session whose connections leave from ``ip`` when it is an address of this host,
    so a server checking the request's source sees the registered address (multi-homed hosts)."""
    import requests
    from requests.adapters import HTTPAdapter

    class FromAddress(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            kwargs["source_address"] = (ip, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    if ip and is_local_address(ip):
        for scheme in ("http://", "https://"):
            session.mount(scheme, FromAddress())
    return session


class Unreachable(Exception):
    """No instance answered (each one's failure in the message)."""


def first_answer(session, method, urls, path, timeout, **kwargs):
    """(url, response) from the first instance in ``urls`` that answers without a 5xx; a 4xx is
    an answer (every instance would give the same)."""
    import requests

    failures = []
    for url in urls:
        try:
            resp = session.request(method, f"{url}{path}", timeout=(min(CONNECT_TIMEOUT_S, timeout), timeout),
                                   **kwargs)
        except requests.RequestException as exc:
            failures.append(f"{url} unreachable ({exc.__class__.__name__})")
            continue
        if resp.status_code >= 500:
            failures.append(f"{url} answered HTTP {resp.status_code}: {_error_text(resp)}")
            continue
        return url, resp
    raise Unreachable("; ".join(failures))


def _work(host, grains):
    """(instances in this host's order, registrations, problems, timeout) for one round of calls."""
    entries, problems = plan(host, grains)
    ip = entries[0]["ip"] if entries else ""
    return instance_order(base_urls(host), ip), entries, problems, float(host["discovery"]["register"]["timeout"])


def _for_each(host, grains, action, outcome, method, path, form, ok_statuses):
    """One ``method`` request per registration (``path(entry)``, body ``form(entry)``), each to the
    first instance that answers; raises naming each one that failed, else returns
    ``{outcome: [...], "url": the instances that answered}``."""
    urls, entries, problems, timeout = _work(host, grains)
    token = read_token(host)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    done, answered = [], []
    with session_from(entries[0]["ip"] if entries else None) as session:
        for entry in entries:
            target = f"{entry['service']} {endpoint(entry)}"
            try:
                url, resp = first_answer(session, method, urls, path(entry), timeout, data=form(entry),
                                         headers=headers)
            except Unreachable as exc:
                problems.append(f"{target}: no discovery instance answered: {exc}")
                continue
            if resp.status_code not in ok_statuses:
                hint = f" ({token_hint(token, entry)})" if resp.status_code == 403 else ""
                problems.append(f"{target}: refused with HTTP {resp.status_code}: {_error_text(resp)}{hint}")
                continue
            done.append(target)
            if url not in answered:
                answered.append(url)
    where = ", ".join(answered) or ", ".join(urls)
    if problems:
        raise EnvoyFormulaError(f"envoy.{action}: " + "; ".join(problems),
                                info={outcome: done, "problems": problems, "url": where})
    return {outcome: done, "url": where}


def register(host, grains):
    def form(entry):
        return {"ip": entry["ip"], "port": str(entry["port"]), "revision": entry["revision"],
                "service_repo_name": entry["service"], "tags": json.dumps(entry["tags"], sort_keys=True)}

    return _for_each(host, grains, "register", "registered", "POST",
                     lambda entry: f"/v1/registration/{entry['service']}", form, ok_statuses=(200,))


def deregister(host, grains):
    return _for_each(host, grains, "deregister", "deregistered", "DELETE",
                     lambda entry: f"/v1/registration/{entry['service']}/{endpoint(entry)}", lambda entry: None,
                     ok_statuses=(200, 404))


def status(host, grains):
    """For each registration: listed by the discovery service at this ip:port, and ``current``
    (same revision and tags)?"""
    urls, entries, problems, timeout = _work(host, grains)
    out, answered = [], urls[0]
    with session_from(None) as session:
        for entry in entries:
            try:
                answered, resp = first_answer(session, "GET", urls, f"/v1/registration/{entry['service']}", timeout)
                resp.raise_for_status()
                listed = resp.json().get("hosts", [])
            except (Unreachable, ValueError, OSError) as exc:
                raise EnvoyFormulaError(f"{entry['service']}: cannot list hosts at {', '.join(urls)} "
                                        f"({exc.__class__.__name__}: {exc})") from exc
            mine = next((h for h in listed if h.get("ip_address") == entry["ip"] and h.get("port") == entry["port"]),
                        None)
            out.append({**entry, "listed": mine is not None, "last_check_in": (mine or {}).get("last_check_in"),
                        "current": bool(mine) and mine.get("revision") == entry["revision"]
                        and mine.get("tags") == entry["tags"]})
    return {"services": out, "problems": problems, "url": answered}
