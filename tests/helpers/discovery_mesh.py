"""
A mesh (tests/helpers/mesh.py) for discovery at fleet scale and for who may register what
(tests/mesh/test_discovery_fleet.py), set up through Salt like the other:

- ``store`` runs Redis; ``disc1``, ``disc2``, ``disc3`` run ``envoy-discovery`` through the formula
  (two workers each, all on that Redis), and every Envoy lists all three
  (``envoy:discovery:address`` as a list: the retrying discovery shape);
- the master runs the formula's ``envoy_discovery`` ext_pillar (keys in
  ``/etc/salt/envoy-discovery.keys``): every minion gets its registration token, the discovery
  hosts the keys; ``hosts/<id>.sls`` says which services each minion may register;
- ``foo``, ``bar1``, ``bar2`` run sidecars; bar's manifest also lists foo as an upstream, so every
  sidecar's Envoy polls EDS. Requests: lab network -> foo's ingress :9211 -> foo -> egress -> (EDS)
  a bar host's ingress :9212 -> bar.

Test-sized timings: TTL 30 s, heartbeats every 5 s, EDS polls every 1-2 s.
"""

import json
import secrets
import shlex

import yaml

from .lab import LAB, VENV_BIN
from .mesh import BARS, PORTS, Mesh, lab_pillar
from .net import wait_for

HOSTS = ("master", "store", "disc1", "disc2", "disc3", "foo", "bar1", "bar2")
INSTANCES = ("disc1", "disc2", "disc3")
SIDECARS = ("foo", *BARS)
MINIONS = (*INSTANCES, *SIDECARS)
ALLOWED = {"foo": ["foo"], "bar1": ["bar"], "bar2": ["bar"]}  # envoy:discovery:auth:services per minion
TTL = 30
HEARTBEAT_S = 5
REDIS_PORT = 6379
KEYS_FILE = "/etc/salt/envoy-discovery.keys"
TOKEN_FILE = "/etc/envoy/discovery/token"


class DiscoveryMesh(Mesh):
    hosts = HOSTS
    minions = MINIONS

    def __init__(self, workdir, bundle, auth_mode="off"):
        super().__init__(workdir, bundle)
        self.key = ("k1", secrets.token_urlsafe(32))
        self.pillar_overrides = {"envoy": {
            "discovery": {
                "register": {"seconds": HEARTBEAT_S, "splay": 1},
                "auth": {"mode": auth_mode},
                "server": {"ttl": TTL, "workers": 2,
                           "redis": f"redis://{self.lab.address('store')}:{REDIS_PORT}/0"},
            },
            "defaults": {"upstreams": {"eds_refresh_ms": 1000}},
        }}

    # --- the fleet -----------------------------------------------------------------------------

    def base_pillar(self):
        pillar = lab_pillar(self.lab, self.tuning, discovery_hosts=INSTANCES)
        pillar["envoy"]["observability"].pop("tracing")  # no collector in this mesh
        return pillar

    def state_top(self):
        return {"base": {
            ",".join(INSTANCES): [{"match": "list"}, "envoy.discovery", "envoy.schedule"],
            ",".join(SIDECARS): [{"match": "list"}, "envoy"],
        }}

    def pillar_top(self):
        return ("# This mesh's fleet: the sidecars get their role; per-host settings (the services\n"
                "# each minion may register) last, targeted by minion id.\n"
                "base:\n"
                "  '*':\n    - envoy.common\n    - envoy.bundle\n    - lab\n"
                f"  '{','.join(SIDECARS)}':\n    - match: list\n    - envoy.sidecar\n"
                "  '{{ grains[\"id\"] }}':\n    - hosts.{{ grains[\"id\"] }}\n    - ignore_missing: true\n")

    def master_config(self):
        urls = [f"http://{self.lab.address(h)}:{PORTS['discovery']}" for h in INSTANCES]
        return {**super().master_config(),
                "ext_pillar": [{"envoy_discovery": {}}],
                # The formula's presence cleanup: the master notices a lost minion within 2 s.
                "presence_events": True, "loop_interval": 2,
                "log_granular_levels": {"salt.utils.reactor": "debug", "salt.master": "debug"},
                "reactor": [{"salt/presence/change": ["salt://envoy/reactor/presence.sls"]}],
                "envoy_discovery": {"keys_file": KEYS_FILE, "urls": urls, "idle_s": 2 * HEARTBEAT_S + 2}}

    def write_master_trees(self):
        super().write_master_trees()
        keys = self.lab.path("master", KEYS_FILE)
        keys.write_text(f"# the keys registration tokens are signed with (the first signs)\n{' '.join(self.key)}\n")
        keys.chmod(0o600)
        for host, services in ALLOWED.items():
            self.set_host_pillar(host, {"envoy": {"discovery": {"auth": {"services": services}}}})
        redis = shlex.join([str(VENV_BIN / "redis-server"), "--bind", "0.0.0.0", "--port", str(REDIS_PORT),
                            "--save", "", "--appendonly", "no", "--protected-mode", "no"])
        unit = self.lab.install_boot_unit("store", "20-redis", f"setsid -f {redis} </dev/null >>/var/log/redis.log 2>&1")
        self.lab.run("store", unit)

    def manifest(self, service):
        manifest = super().manifest(service)
        if service == "bar":  # bar's Envoy polls EDS too
            manifest["upstreams"] = [{"service": "foo"}]
        return manifest

    def deploy_apps(self):
        bars = [f"http://{self.lab.address(b)}:{PORTS['bar_app']}" for b in BARS]
        for host, app, extra in (("bar1", "bar", []), ("bar2", "bar", []),
                                 ("foo", "foo", [arg for url in bars for arg in ("--direct-bar", url)])):
            manifest = self.lab.path(host, f"/etc/envoy/manifest.d/{app}.yaml")
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text(f"# Dropped by {app}'s deploy.\n" + yaml.safe_dump(self.manifest(app), sort_keys=False))
            self.app_unit(host, app, ["--port", str(PORTS[f"{app}_app"]), *extra])
        for host, app in (("bar1", "bar"), ("bar2", "bar"), ("foo", "foo")):
            wait_for(lambda h=host, a=app: self.lab.run(h, ["curl", "-sf", f"http://127.0.0.1:{PORTS[a + '_app']}/healthcheck"],
                                                        check=False).returncode == 0,
                     timeout=30, what=f"app {app} on {host}")

    def converge_groups(self):
        return [list(INSTANCES), list(BARS), ["foo"]]

    def converge(self):
        # The master's own copy of the formula's modules: the ext_pillar and the library it uses.
        self.lab.run("master", [str(VENV_BIN / "salt-run"), "saltutil.sync_all"], timeout=300)
        super().converge()

    def edge_url(self, path="/foo/hello"):
        """Requests enter at foo's ingress (this mesh has no edge)."""
        return f"http://{self.lab.address('foo')}:{PORTS['foo_ingress']}{path}"

    # --- looking at discovery ------------------------------------------------------------------

    def discovery_get(self, path, via=None):
        """JSON of GET ``path`` on an instance (``via``, else the first that answers), from the lab
        network; None when none answers."""
        for host in [via] if via else INSTANCES:
            proc = self.lab.run(LAB, ["curl", "-sf", "-m", "3", f"http://{self.lab.address(host)}:{PORTS['discovery']}{path}"],
                                check=False)
            if proc.returncode == 0:
                return json.loads(proc.stdout) if path != "/metrics" else proc.stdout
        return None

    def registrations(self, service):
        answer = self.discovery_get(f"/v1/registration/{service}")
        return answer["hosts"] if answer else []

    def listed(self, service):
        return sorted(h["ip_address"] for h in self.registrations(service))

    def metric(self, name, hosts=INSTANCES, **labels):
        """A counter summed over the instances in ``hosts`` that answer."""
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        total = 0.0
        for host in hosts:
            text = self.discovery_get("/metrics", via=host) or ""
            for line in text.splitlines():
                key, _, value = line.rpartition(" ")
                if key == wanted:
                    total += float(value)
        return total

    def metric_family(self, name, hosts=INSTANCES):
        """{labels text: value} of every series of ``name``, summed over the instances."""
        out = {}
        for host in hosts:
            for line in (self.discovery_get("/metrics", via=host) or "").splitlines():
                key, _, value = line.rpartition(" ")
                if key.startswith(name + "{") or key == name:
                    out[key] = out.get(key, 0.0) + float(value)
        return out

    def token(self, host):
        return self.lab.path(host, TOKEN_FILE).read_text().strip()

    def post_registration(self, from_host, service, ip, token=None, via="disc3", port=None):
        """(status, JSON body) of a registration POSTed from ``from_host`` (a lab host, or LAB)."""
        form = {"ip": ip, "port": str(port or PORTS.get(f"{service}_ingress", 9999)), "revision": "forged", "service_repo_name": service,
                "tags": json.dumps({"az": "lab-1a", "region": "lab-1", "instance_id": f"i-{from_host}"})}
        argv = ["curl", "-s", "-m", "5", "-w", "\n%{http_code}", "-X", "POST",
                f"http://{self.lab.address(via)}:{PORTS['discovery']}/v1/registration/{service}"]
        for key, value in form.items():
            argv += ["--data-urlencode", f"{key}={value}"]
        if token:
            argv += ["-H", f"Authorization: Bearer {token}"]
        proc = self.lab.run(from_host, argv, check=False)
        body, _, status = proc.stdout.rpartition("\n")
        try:
            return int(status), json.loads(body) if body.strip() else {}
        except ValueError:
            return 0, {"raw": proc.stdout, "stderr": proc.stderr}

    def server_commands(self):
        """{instance: the argv its discovery daemon runs with} (from the minions)."""
        data = self.salt(",".join(INSTANCES), "envoy.discovery_server_status", tgt_type="list", timeout=30)
        return {host: " ".join(status["running_command"]) if status.get("running") else None
                for host, status in data.items() if isinstance(status, dict)}

    def kill_instance(self, host):
        """SIGKILL the discovery daemon on ``host`` and its workers (its whole process group)."""
        self.lab.run(host, "pid=$(cat /run/envoy/envoy-discovery.pid) && "
                           "kill -9 -- -$(ps -o pgid= -p $pid | tr -d ' ')")

    def presence_diagnostics(self):
        """What the master and the instances logged about presence (printed when a test fails)."""
        wanted = ("presence", "discovery", "reactor", "Traceback", "ERROR", "Error")
        master = [line for line in self.read("master", "/var/log/salt/master").splitlines()
                  if any(w in line for w in wanted)]
        instances = [f"{h}: {line}" for h in INSTANCES
                     for line in self.read(h, "/var/log/envoy/envoy-discovery.log").splitlines() if "expir" in line]
        present = self.lab.run("master", [str(VENV_BIN / "salt-run"), "--out=json", "manage.present"], check=False)
        hosts = [f"--- {h}:\n" + self.lab.run(h, "ps -eo pid,ppid,etimes,args | cut -c1-160; ss -tnp | grep 4505",
                                                check=False).stdout for h in ("master", "bar2")]
        return "\n".join(["master:", *master[-60:], "instances:", *instances[-20:],
                          f"manage.present now: {present.stdout} {present.stderr[-500:]}", *hosts])

    def wait_instances_healthy(self, timeout=120):
        wait_for(lambda: all(self.discovery_get("/v1/registration/bar", via=h) is not None for h in INSTANCES),
                 timeout=timeout, interval=1, what="every discovery instance answering")

    def wait_path_ready(self, timeout=90):
        wait_for(lambda: self.healthy_bars() == list(BARS), timeout=timeout, interval=0.5,
                 what=f"both bar hosts healthy in foo's Envoy (now {self.cluster_hosts('foo', 'bar')})")
        wait_for(lambda: self.get_via_edge()[0] == 200, timeout=timeout, interval=0.5,
                 what="a request through foo's ingress")
