"""
The mesh lab (tests/helpers/mesh.py) with mesh TLS managed by Salt (docs/mesh-tls.md): the
``discovery`` minion is also the mesh CA (``envoy.identity.ca`` in its top file, the repo's
``pillar/envoy/mesh_ca.sls`` signing policy in its pillar), the master lets minions ask it to sign
(``peer``), and every host's pillar has ``envoy:mesh_tls`` with the lab's trust domain and the
allow lists foo <- edge, bar <- foo.

    with MeshTLS(tmp_path / "mesh", bundle, mode="strict") as mesh:
        mesh.set_mesh_tls(mode="permissive", send_tls=True)   # pillar edit
        mesh.converge_hosts()                                 # highstate, callees first
        mesh.certs("bar1")                                    # {URI SAN: {serials}} Envoy presents
"""

import datetime
import json
import time

import yaml

from .mesh import ACCESS_LOG_FORMAT, BARS, PORTS, Mesh, SaltError
from .net import wait_for

TRUST_DOMAIN = "lab.mesh"
CA_MINION = "discovery"
CALLERS = {"foo": ["edge"], "bar": ["foo"]}
# Who called (the peer's URI SAN) and why Envoy answered as it did (rbac_access_denied_..., via_upstream).
TLS_ACCESS_LOG_FORMAT = ACCESS_LOG_FORMAT + " peer=%DOWNSTREAM_PEER_URI_SAN% details=%RESPONSE_CODE_DETAILS%"
SERVICE_HOSTS = (*BARS, "foo", "edge")  # callees first: each caller's Envoy finds its callees ready
INGRESS = {"bar1": PORTS["bar_ingress"], "bar2": PORTS["bar_ingress"], "foo": PORTS["foo_ingress"]}


def spiffe(identity):
    return f"spiffe://{TRUST_DOMAIN}/edge" if identity == "edge" else f"spiffe://{TRUST_DOMAIN}/service/{identity}"


def mesh_tls_pillar(mode, send_tls=None, callers=None, **extra):
    settings = {"mode": mode, "trust_domain": TRUST_DOMAIN, "ca": {"minion": CA_MINION}, **extra}
    if send_tls is not None:
        settings["send_tls"] = send_tls
    services = {name: {"callers": list(allowed)} for name, allowed in (callers or CALLERS).items()}
    return {"envoy": {"mesh_tls": settings, "services": services,
                      "observability": {"access_log": {"format": TLS_ACCESS_LOG_FORMAT}}}}


class MeshTLS(Mesh):
    def __init__(self, workdir, bundle, mode="off", send_tls=None, pillar_overrides=None, **kwargs):
        self.mesh_tls = mesh_tls_pillar(mode, send_tls)
        super().__init__(workdir, bundle, pillar_overrides=pillar_overrides, **kwargs)

    def set_lab_pillar(self, overrides):
        """The lab's pillar with this mesh's ``envoy:mesh_tls`` (and allow lists) over it."""
        from .mesh import deep_merge

        super().set_lab_pillar(deep_merge(self.mesh_tls, overrides))

    def set_mesh_tls(self, mode, send_tls=None, callers=None, **extra):
        """Edit the master's pillar: the fleet's mesh TLS settings (not applied until a highstate)."""
        self.mesh_tls = mesh_tls_pillar(mode, send_tls, callers, **extra)
        self.set_lab_pillar({})

    def write_master_trees(self):
        super().write_master_trees()
        master = self.lab.path("master", "/etc/salt/master")
        config = yaml.safe_load(master.read_text())
        # Minions may ask the CA minion to sign (x509.sign_remote_certificate through the master).
        config["peer"] = {".*": ["x509.sign_remote_certificate"]}
        master.write_text(yaml.safe_dump(config))
        top = self.lab.path("master", "/srv/salt/ext/top.sls")
        states = yaml.safe_load(top.read_text())
        states["base"]["discovery"] = ["envoy.identity.ca", *states["base"]["discovery"]]
        top.write_text(yaml.safe_dump(states, sort_keys=False))
        pillar_top = self.lab.path("master", "/srv/pillar/top.sls")
        pillar_top.write_text(pillar_top.read_text() + f"  'L@{CA_MINION}':\n    - match: compound\n    - envoy.mesh_ca\n")

    # --- converging ----------------------------------------------------------------------------

    def highstate_queued(self, minions, timeout=300):
        """``state.highstate queue=True`` (after a scheduled run in progress) on ``minions``;
        fails naming the states that failed. Returns {minion: {state id: state}}."""
        data = self.salt(",".join(minions), "state.highstate", "queue=True", tgt_type="list", timeout=timeout)
        problems, out = {}, {}
        for minion in minions:
            states = data.get(minion)
            if not isinstance(states, dict):
                problems[minion] = states
                continue
            out[minion] = {s.get("__id__", key): s for key, s in states.items()}
            failed = {sid: s.get("comment") for sid, s in out[minion].items() if s.get("result") is not True}
            if failed:
                problems[minion] = failed
        if problems:
            raise SaltError(f"highstate failed: {json.dumps(problems, indent=1)[:6000]}")
        return out

    def converge_hosts(self, hosts=SERVICE_HOSTS):
        """Highstate the service hosts one at a time, callees first; returns their states."""
        return {host: self.highstate_queued([host])[host] for host in hosts}

    # --- looking ---------------------------------------------------------------------------------

    def certs(self, host):
        """{URI SAN: {serials}} of the certificates ``host``'s Envoy presents (admin /certs)."""
        out = {}
        for context in json.loads(self.admin(host, "/certs") or "{}").get("certificates", []):
            for cert in context.get("cert_chain") or []:
                for san in cert.get("subject_alt_names") or []:
                    if "uri" in san:
                        out.setdefault(san["uri"], set()).add(int(cert["serial_number"], 16))
        return out

    def restart_epoch(self, host):
        return json.loads(self.admin(host, "/server_info") or "{}").get("command_line_options", {}).get("restart_epoch")

    def status(self, host):
        return self.salt(host, "envoy.status")[host]

    def ingress_url(self, host, path="/", scheme="https"):
        return f"{scheme}://{self.lab.address(host)}:{INGRESS[host]}{path}"

    def curl(self, where, url, *options, timeout=10):
        """(exit code, HTTP status or 0, stderr) of one curl run on host ``where``."""
        proc = self.lab.run(where, ["curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w", "%{http_code}",
                                    *options, url], check=False)
        status = int(proc.stdout.strip() or 0) if proc.stdout.strip().isdigit() else 0
        return proc.returncode, status, proc.stderr

    def wait_certs(self, host, uri, serial, timeout=30):
        return wait_for(lambda: self.certs(host).get(uri) == {serial}, timeout=timeout, interval=0.2,
                        what=f"{host}'s Envoy presenting {uri} with serial {serial:x}")

    def log_lines(self, host, *markers, since=0):
        """Access log lines of ``host`` (from line ``since``) containing every marker."""
        return [line for line in self.access_log(host)[since:] if all(m in line for m in markers)]


# --- scenarios (tests/mesh/test_mesh_tls.py, benchmarks/bench_mtls.py) ------------------------------

MIGRATION = (
    {"mode": "permissive"},                     # every ingress takes mTLS too; callers unchanged
    {"mode": "permissive", "send_tls": True},   # callers switch to mTLS; plaintext still accepted
    {"mode": "strict"},                         # every ingress takes mTLS only, allow lists enforced
)


def migrate(mesh, steps=MIGRATION, rate=200, settle_s=2.0):
    """Each step a pillar edit, then a highstate of every service host (callees first), all under
    open-loop load into the edge. Returns the load's failures, each step's duration and the
    response flags of foo's calls to bar."""
    from .mesh_scenarios import egress_flags, failures

    wall_start = time.time()
    load = mesh.load(rate=rate, duration=590, name="migration", timeout=5)
    timings = []
    try:
        time.sleep(settle_s)
        for step in steps:
            began = time.monotonic()
            mesh.set_mesh_tls(**step)
            mesh.converge_hosts()
            timings.append({**step, "converge_s": round(time.monotonic() - began, 1)})
            time.sleep(settle_s)
    finally:
        result = load.stop()
    return {"failed": failures(result), "sent": result["sent"], "steps": timings,
            "egress_flags": egress_flags(mesh, wall_start), "load": result}


def issue_short_lived(mesh, host, identity, hours=2):
    """What a host whose highstate stopped running for weeks looks like: a certificate from the
    mesh CA (x509.create_certificate through the master, as the formula asks for them) that
    expires in ``hours``, written over the identity's certificate and given to Envoy."""
    not_after = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours))
    pki = "/etc/envoy/pki"
    out = mesh.salt(host, "x509.create_certificate", f"ca_server={CA_MINION}", "signing_policy=envoy_mesh",
                    f"private_key={pki}/{identity}.key", f"CN={identity}", f"subjectAltName=URI:{spiffe(identity)}",
                    f"not_after={not_after:%Y-%m-%d %H:%M:%S}", f"path={pki}/{identity}.crt")[host]
    assert "written" in str(out), out
    published = mesh.salt(host, "envoy.mesh_publish")[host]
    assert published["problems"] == [] and published["published"], published
    return not_after


def renew_expiring(mesh, host="bar1", identity="bar", rate=200, settle_s=2.0, renew_timeout=240):
    """Under load: ``host``'s certificate is swapped for one that expires in two hours (Envoy
    serves it at once); then the host's own scheduled highstate renews it (fewer than
    renew_days_remaining days left) and Envoy serves the new one, without a restart."""
    from .mesh_scenarios import egress_flags, failures

    uri = spiffe(identity)
    epoch = mesh.restart_epoch(host)
    (first,) = mesh.certs(host)[uri]
    wall_start = time.time()
    load = mesh.load(rate=rate, duration=590, name="renewal", timeout=5)
    try:
        time.sleep(settle_s)
        short_until = issue_short_lived(mesh, host, identity)
        (short,) = wait_for(lambda: (s := mesh.certs(host).get(uri)) and s != {first} and s, timeout=30,
                            interval=0.2, what=f"{host}'s Envoy serving the short-lived certificate")
        status_short = mesh.status(host)
        swapped = time.monotonic()
        (renewed,) = wait_for(lambda: (s := mesh.certs(host).get(uri)) and s != {short} and s,
                              timeout=renew_timeout, interval=0.5, what=f"{host}'s highstate renewing {uri}")
        renewed_after_s = time.monotonic() - swapped
        time.sleep(settle_s)
    finally:
        result = load.stop()
    status = mesh.status(host)
    return {"failed": failures(result), "sent": result["sent"], "serials": (first, short, renewed),
            "short_until": short_until, "status_short": status_short, "status": status,
            "renewed_after_s": renewed_after_s, "epochs": (epoch, mesh.restart_epoch(host)),
            "egress_flags": egress_flags(mesh, wall_start), "load": result}
