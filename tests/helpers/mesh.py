"""
The mesh on lab hosts (tests/helpers/lab.py), set up through Salt the way users run it:

- ``master`` runs a salt-master daemon. Its file roots are the formula's ``salt/``, a small dir with
  only ``_modules``, ``_states``, ``_runners``, ``_utils`` (links into the repo) and the lab's
  ``top.sls``, and a dir that publishes bundles as ``salt://envoy-bundles/<archive>``. Its pillar is a copy of the
  repo's ``pillar/`` with the lab's catalogue (foo and bar from discovery), a ``lab.sls`` (what the
  network team sets for this fleet: tracing, access log format, health checks, schedule) and
  ``hosts/<id>.sls`` per host.
- ``discovery``, ``edge``, ``foo``, ``bar1``, ``bar2`` run salt-minion daemons (keys auto-accepted in
  the lab), started at boot like an enabled unit. The master CLI runs ``saltutil.sync_all`` and
  ``state.highstate``; after that the minions' own schedule (``envoy:schedule: method: minion``)
  converges them.
- Deploys drop the services' manifests into ``/etc/envoy/manifest.d/`` and start the apps
  (tests/helpers/mesh_apps.py) as boot units: bar (stdlib ``ThreadingHTTPServer``) on both bar
  hosts, foo (WSGI + ``envoy_client``) on foo, and a Zipkin collector on the discovery host.

Request path: client (the lab network) -> edge Envoy :8080 ``/foo`` -> foo's sidecar ingress :9211
-> foo app -> foo's egress 127.0.0.1:9001 (Host: bar) -> EDS -> a bar host's ingress :9212 -> bar app.
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from envoy_bundle.builder import write_pillar

from .lab import LAB, REPO, VENV_BIN, Lab, LabError
from .net import wait_for

HOSTS = ("master", "discovery", "edge", "foo", "bar1", "bar2")
MINIONS = ("discovery", "edge", "foo", "bar1", "bar2")
BARS = ("bar1", "bar2")
PORTS = {"edge": 8080, "foo_ingress": 9211, "bar_ingress": 9212, "foo_app": 18081, "bar_app": 18082,
         "egress": 9001, "admin": 9901, "discovery": 8080, "zipkin": 9411}
ACCESS_LOG_FORMAT = (
    "[%START_TIME%] %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% flags=%RESPONSE_FLAGS% %DURATION%ms "
    "rid=%REQ(X-REQUEST-ID)% route=%ROUTE_NAME% cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST% "
    "local=%DOWNSTREAM_LOCAL_ADDRESS% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
    # Envoy's own time on this hop = total - upstream (first request byte in to last response byte
    # out, minus first byte sent upstream to last byte back), in microseconds.
    "total_us=%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% upstream_us=%COMMON_DURATION(US_TX_BEG:US_RX_END:us)%"
)
# What a dead host costs callers depends on these (docs/mesh-lab.md says why each is needed):
MESH_TUNING = {
    # A request sent on a pooled connection to a host that lost power gets no answer and no reset:
    # without a per-try timeout it waits out the whole route timeout (504 UT) instead of retrying.
    "per_try_timeout_ms": 250,
    # Eject on 3 consecutive failures (connect timeouts and resets count) and re-check every second.
    # max_retries and max_ejection_percent are the generator's defaults (1024, 50): the power-loss
    # test checks them (with Envoy's own 3 and 10 % the lab lost requests).
    "outlier_detection": {"consecutive_5xx": 3, "interval_ms": 1000, "base_ejection_time_ms": 10000},
}
SCHEDULE_SECONDS = 15
SCHEDULE_SPLAY = 2
PYTHON = sys.executable


def lab_pillar(lab, tuning=True, discovery_hosts=("discovery",)):
    """What the network team sets for this fleet, on top of the repo's example pillar; ``tuning``:
    with :data:`MESH_TUNING` (without it, the example pillar's upstream defaults);
    ``discovery_hosts``: the hosts running the discovery service (the first also runs the Zipkin
    collector)."""
    discovery = lab.address(discovery_hosts[0])
    addresses = [f"{lab.address(host)}:{PORTS['discovery']}" for host in discovery_hosts]
    return {"envoy": {
        "lookup": {"supervisor": "daemon"},  # no systemd in the lab hosts
        "schedule": {"method": "minion", "seconds": SCHEDULE_SECONDS, "splay": SCHEDULE_SPLAY},
        "restart": {
            "concurrency": 1,
            # Access log lines reach the file within 100 ms (Envoy's default: every 10 s).
            "envoy_args": ["--file-flush-interval-msec=100"],
        },
        "discovery": {
            "address": addresses[0] if len(addresses) == 1 else addresses,
            "register": {"seconds": 10, "splay": 2, "tags": {"az": "lab-1a"}},
            "server": {"hosts": list(discovery_hosts), "listen": f"0.0.0.0:{PORTS['discovery']}", "ttl": 120,
                       "command": str(VENV_BIN / "envoy-discovery")},
        },
        "observability": {
            "access_log": {"enabled": True, "format": ACCESS_LOG_FORMAT},
            "request_id": True,
            "tracing": {"zipkin": {"address": f"{discovery}:{PORTS['zipkin']}", "endpoint": "/api/v2/spans"},
                        "sample_percent": 100},
        },
        "defaults": {"upstreams": {
            # Faster than production so the tests run in seconds: an idle or new host is checked
            # every second; two failed checks take it out, two good ones bring it back.
            "health_check": {"interval_ms": 1000, "timeout_ms": 500, "no_traffic_interval_ms": 1000,
                             "no_traffic_healthy_interval_ms": 1000, "unhealthy_threshold": 2, "healthy_threshold": 2},
            **(MESH_TUNING if tuning else {}),
        }},
    }}


def deep_merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class SaltError(RuntimeError):
    pass


class LoadRun:
    """An openloop load generator running in the lab network (see tests/helpers/openloop.py)."""

    def __init__(self, mesh, urls, rate, duration, count=None, connections=64, timeout=10.0, name="load"):
        self.out = mesh.workdir / f"{name}-{time.monotonic_ns()}.json"
        argv = [PYTHON, "-m", "tests.helpers.openloop", "--rate", str(rate), "--duration", str(duration),
                "--connections", str(connections), "--timeout", str(timeout), "--out", str(self.out)]
        for url in urls:
            argv += ["--url", url]
        if count:
            argv += ["--count", str(count)]
        self.proc = mesh.lab.spawn(LAB, argv, stdout=mesh.workdir / f"{name}.log")
        self.started = time.monotonic()
        self.max_s = duration + timeout + 30
        self._result = None

    def stop(self):
        """Stop sending now (SIGINT), wait for requests in flight; returns the result dict."""
        if self._result is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            return self.wait()
        return self._result

    def wait(self):
        if self._result is None:
            try:
                self.proc.wait(timeout=max(5, self.max_s - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                raise
            if not self.out.exists():
                raise RuntimeError(f"the load generator wrote no result (exit {self.proc.returncode})")
            self._result = json.loads(self.out.read_text())
        return self._result


class Mesh:
    # Subclasses with other hosts (tests/helpers/discovery_mesh.py) override these and the hooks
    # below: state_top, pillar_top, master_config, deploy_apps, converge_groups, wait_path_ready.
    hosts = HOSTS
    minions = MINIONS

    def __init__(self, workdir, bundle, extra_bundles=(), pillar_overrides=None, tuning=True):
        """``bundle``: (tarball, sha256) every host runs; ``extra_bundles``: more archives the master
        publishes (upgrades); ``pillar_overrides``: merged over :func:`lab_pillar` (with ``tuning``)."""
        self.tuning = tuning
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bundle = bundle
        self.extra_bundles = list(extra_bundles)
        self.lab = Lab(self.workdir / "lab", self.hosts)
        self.pillar_overrides = pillar_overrides or {}
        self.timings = {}

    # --- set up ------------------------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.lab.close()

    def start(self):
        began = time.monotonic()
        self.lab.start()
        self.write_master_trees()
        self.lab.install_boot_unit("master", "10-salt-master", f"exec {VENV_BIN}/salt-master -d")
        self.lab.run("master", f"{VENV_BIN}/salt-master -d")
        for minion in self.minions:
            self.write_minion_config(minion)
            unit = self.lab.install_boot_unit(minion, "10-salt-minion", f"exec {VENV_BIN}/salt-minion -d")
            self.lab.run(minion, unit)
        self.deploy_apps()
        self.wait_minions()
        self.timings["salt_up_s"] = time.monotonic() - began
        self.converge()
        self.timings["converged_s"] = time.monotonic() - began

    def write_master_trees(self):
        master = self.lab
        file_root = master.path("master", "/srv/salt")
        ext = file_root / "ext"
        ext.mkdir(parents=True)
        for sub in ("_modules", "_states", "_runners", "_utils", "_pillar"):
            (ext / sub).symlink_to(REPO / sub)
        (ext / "top.sls").write_text(yaml.safe_dump(self.state_top(), sort_keys=False))
        published = file_root / "bundles" / "envoy-bundles"
        published.mkdir(parents=True)
        for tarball, _sha in [self.bundle, *self.extra_bundles]:
            shutil.copy(tarball, published / Path(tarball).name)
        pillar = master.path("master", "/srv/pillar")
        shutil.copytree(REPO / "pillar", pillar, dirs_exist_ok=True)
        common = yaml.safe_load((pillar / "envoy/common.sls").read_text())
        # The lab's catalogue: foo and bar hosts come from the discovery service.
        common["envoy"]["services"] = {"foo": {"discovery": "eds"}, "bar": {"discovery": "eds"}}
        (pillar / "envoy/common.sls").write_text("# The repo's example, with the lab's catalogue.\n"
                                                 + yaml.safe_dump(common, sort_keys=False))
        front = yaml.safe_load((pillar / "envoy/front.sls").read_text())
        # foo itself retries bar within its 1 s timeout: give each edge try longer than that.
        front["envoy"]["routes"][0]["per_try_timeout_ms"] = 2500
        (pillar / "envoy/front.sls").write_text("# The repo's example; the edge route's tries outlast foo's own.\n"
                                                + yaml.safe_dump(front, sort_keys=False))
        tarball, _ = self.bundle
        write_pillar(pillar / "envoy/bundle.sls", tarball, f"{tarball}.sha256", source_prefix="salt://envoy-bundles/")
        self.set_lab_pillar({})
        (pillar / "top.sls").write_text(self.pillar_top())
        (pillar / "hosts").mkdir(exist_ok=True)
        master.path("master", "/etc/salt/master").write_text(yaml.safe_dump(self.master_config()))

    def state_top(self):
        return {"base": {
            "discovery": ["envoy.discovery", "envoy.schedule"],
            "edge,foo,bar1,bar2": [{"match": "list"}, "envoy"],
        }}

    def pillar_top(self):
        return ("# The lab fleet: every minion gets the network team's pillar; the edge and the sidecars\n"
                "# their role; per-host settings last.\n"
                "base:\n"
                "  '*':\n    - envoy.common\n    - envoy.bundle\n    - lab\n"
                "  'L@edge':\n    - match: compound\n    - envoy.front\n"
                "  'foo,bar1,bar2':\n    - match: list\n    - envoy.sidecar\n"
                "  '{{ grains[\"id\"] }}':\n    - hosts.{{ grains[\"id\"] }}\n    - ignore_missing: true\n")

    def master_config(self):
        return {
            "interface": self.lab.address("master"),
            "auto_accept": True,
            "file_roots": {"base": [str(REPO / "salt"), "/srv/salt/ext", "/srv/salt/bundles"]},
            "pillar_roots": {"base": ["/srv/pillar"]},
            "worker_threads": 4,
            "log_level_logfile": "info",
        }

    def set_lab_pillar(self, overrides):
        """Rewrite the master's ``lab.sls``: :func:`lab_pillar`, the mesh's overrides, then ``overrides``."""
        data = deep_merge(deep_merge(self.base_pillar(), self.pillar_overrides), overrides)
        self.lab.path("master", "/srv/pillar/lab.sls").write_text(
            "# The network team's settings for the lab fleet (tests/helpers/mesh.py).\n"
            + yaml.safe_dump(data, sort_keys=False))

    def base_pillar(self):
        return lab_pillar(self.lab, self.tuning)

    def set_host_pillar(self, host, data):
        path = self.lab.path("master", f"/srv/pillar/hosts/{host}.sls")
        if data:
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            path.unlink(missing_ok=True)

    def write_minion_config(self, minion):
        config = {
            "id": minion,
            "master": self.lab.address("master"),
            "log_level_logfile": "info",
            "acceptance_wait_time": 1,
            "acceptance_wait_time_max": 2,
            "random_reauth_delay": 0,
        }
        path = self.lab.path(minion, "/etc/salt/minion")
        path.write_text(yaml.safe_dump(config))

    def manifest(self, service):
        manifest = yaml.safe_load((REPO / "demo/manifests" / f"{service}.yaml").read_text())
        manifest["ingress"].update(port=PORTS[f"{service}_ingress"], app_port=PORTS[f"{service}_app"])
        return manifest

    def deploy_apps(self):
        """What the services' deploys do: drop the manifest, install the app's unit, start it."""
        bars = [f"http://{self.lab.address(b)}:{PORTS['bar_app']}" for b in BARS]
        apps = [("bar1", "bar", []), ("bar2", "bar", []),
                ("foo", "foo", [arg for url in bars for arg in ("--direct-bar", url)])]
        for host, app, extra in apps:
            manifest = self.lab.path(host, f"/etc/envoy/manifest.d/{app}.yaml")
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text(f"# Dropped by {app}'s deploy.\n" + yaml.safe_dump(self.manifest(app), sort_keys=False))
            self.app_unit(host, app, ["--port", str(PORTS[f"{app}_app"]), *extra])
        self.app_unit("discovery", "zipkin", ["--port", str(PORTS["zipkin"]), "--spans", "/var/log/zipkin/spans.jsonl"])
        for host, app in (("bar1", "bar"), ("bar2", "bar"), ("foo", "foo"), ("discovery", "zipkin")):
            port = PORTS["zipkin"] if app == "zipkin" else PORTS[f"{app}_app"]
            wait_for(lambda h=host, p=port: self.lab.run(h, ["curl", "-sf", f"http://127.0.0.1:{p}/healthcheck"],
                                                         check=False).returncode == 0,
                     timeout=30, what=f"app {app} on {host}")

    def app_unit(self, host, app, args):
        argv = shlex.join([PYTHON, "-m", "tests.helpers.mesh_apps", app, "--log", f"/var/log/apps/{app}.log", *args])
        unit = self.lab.install_boot_unit(host, f"50-app-{app}", (
            f"mkdir -p /var/log/apps\ncd {shlex.quote(str(REPO))}\n"
            f"setsid -f {argv} </dev/null >>/var/log/apps/{app}.out 2>&1"))
        self.lab.run(host, unit)

    # --- salt -------------------------------------------------------------------------------

    def salt(self, target, fun, *args, tgt_type="glob", timeout=300, check=True):
        """``salt <target> <fun> <args>`` on the master; returns {minion: return}."""
        argv = [str(VENV_BIN / "salt"), "--out=json", "--static", f"--timeout={timeout}", "--hide-timeout"]
        if tgt_type != "glob":
            argv.append(f"--{tgt_type}" if tgt_type != "list" else "-L")
        argv += [target, fun, *map(str, args)]
        proc = self.lab.run("master", argv, check=False, timeout=timeout + 60)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            raise SaltError(f"salt {target} {fun}: not JSON ({proc.returncode}): {proc.stdout[-2000:]}"
                            f"{proc.stderr[-2000:]}") from None
        if check and not data:
            raise SaltError(f"salt {target} {fun}: no returns ({proc.returncode}): {proc.stderr[-2000:]}")
        return data

    def salt_run(self, fun, *args, out="json", timeout=300):
        """``salt-run <fun> <args>`` on the master: the parsed JSON (``out="json"``), else the text."""
        argv = [str(VENV_BIN / "salt-run"), f"--out={out}", f"--timeout={timeout}", fun, *map(str, args)]
        proc = self.lab.run("master", argv, check=False, timeout=timeout + 60)
        if proc.returncode != 0:
            raise SaltError(f"salt-run {fun}: exit {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if out != "json":
            return proc.stdout
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise SaltError(f"salt-run {fun}: not JSON: {proc.stdout[-2000:]}{proc.stderr[-2000:]}") from None
        if isinstance(data, str):  # salt-run prints a runner's exception as its return, and exits 0
            raise SaltError(f"salt-run {fun} {' '.join(map(str, args))}: {data[-3000:]}")
        return data

    def wait_minions(self, minions=None, timeout=120):
        minions = minions or self.minions

        def answering():
            data = self.salt(",".join(minions), "test.ping", tgt_type="list", timeout=5, check=False)
            return all(data.get(m) is True for m in minions)

        wait_for(answering, timeout=timeout, interval=1, what=f"minions {', '.join(minions)} answering")

    def highstate(self, minions, **kwargs):
        """``state.highstate`` on ``minions`` from the master CLI; fails on any failed state."""
        data = self.salt(",".join(minions), "state.highstate", tgt_type="list", **kwargs)
        problems = {}
        for minion in minions:
            states = data.get(minion)
            if not isinstance(states, dict):
                problems[minion] = states
                continue
            failed = {s.get("__id__", k): s.get("comment") for k, s in states.items() if s.get("result") is not True}
            if failed:
                problems[minion] = failed
        if problems:
            raise SaltError(f"highstate failed: {json.dumps(problems, indent=1)[:6000]}")
        return data

    def converge_groups(self):
        """Highstate order: each Envoy's first EDS fetch finds what it needs."""
        return [["discovery"], list(BARS), ["foo"], ["edge"]]

    def converge(self):
        """sync_all everywhere, then highstates in dependency order (each Envoy's first EDS fetch
        finds what it needs): the discovery service, the bar hosts, foo, the edge."""
        synced = self.salt(",".join(self.minions), "saltutil.sync_all", tgt_type="list")
        assert set(synced) == set(self.minions), synced
        for group in self.converge_groups():
            began = time.monotonic()
            self.highstate(group)
            self.timings[f"highstate_{'+'.join(group)}_s"] = time.monotonic() - began
        self.wait_path_ready()

    # --- looking at hosts ----------------------------------------------------------------------

    def admin(self, host, path, method="GET"):
        proc = self.lab.run(host, ["curl", "-s", "-m", "5", "-X", method, f"http://127.0.0.1:{PORTS['admin']}{path}"],
                            check=False)
        return proc.stdout

    def cluster_hosts(self, host, cluster):
        """{ip: health flags} of one cluster in ``host``'s Envoy ('' = healthy)."""
        try:
            status = json.loads(self.admin(host, "/clusters?format=json") or "{}")
        except ValueError:
            return {}
        for entry in status.get("cluster_statuses", []):
            if entry["name"] == cluster:
                out = {}
                for h in entry.get("host_statuses", []):
                    ip = h["address"]["socket_address"]["address"]
                    flags = [k for k, v in h.get("health_status", {}).items() if v is True or
                             (k == "eds_health_status" and v not in ("HEALTHY", None))]
                    out[ip] = ",".join(sorted(flags))
                return out
        return {}

    def healthy_bars(self):
        hosts = self.cluster_hosts("foo", "bar")
        return sorted(b for b in BARS if hosts.get(self.lab.address(b)) == "")

    def stat(self, host, name):
        text = self.admin(host, f"/stats?filter=^{name}$")
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def wait_path_ready(self, timeout=90):
        """Both bar hosts healthy in foo's Envoy, and a request through the edge answered."""
        wait_for(lambda: self.healthy_bars() == list(BARS), timeout=timeout, interval=0.5,
                 what=f"both bar hosts healthy in foo's Envoy (now {self.cluster_hosts('foo', 'bar')})")
        wait_for(lambda: self.get_via_edge()[0] == 200, timeout=timeout, interval=0.5,
                 what="a request through the edge")

    def edge_url(self, path="/foo/hello"):
        return f"http://{self.lab.address('edge')}:{PORTS['edge']}{path}"

    def get_via_edge(self, path="/foo/hello", headers=()):
        """(status, body, response headers) of one GET into the edge, from the lab network."""
        argv = ["curl", "-s", "-m", "10", "-D", "-", self.edge_url(path)]
        for header in headers:
            argv += ["-H", header]
        proc = self.lab.run(LAB, argv, check=False)
        head, _, body = proc.stdout.partition("\n\n")  # text mode: CRLF reads as LF
        lines = head.split("\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return 0, proc.stderr, {}
        return status, body, {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}

    def read(self, host, path):
        try:
            return self.lab.path(host, path).read_text(errors="replace")
        except (OSError, LabError):
            return ""

    def access_log(self, host):
        return self.read(host, "/var/log/envoy/access.log").splitlines()

    def app_log(self, host, app):
        return self.read(host, f"/var/log/apps/{app}.log").splitlines()

    def spans(self):
        out = []
        for line in self.read("discovery", "/var/log/zipkin/spans.jsonl").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def registrations(self, service):
        proc = self.lab.run("discovery", ["curl", "-s", "-m", "5",
                                          f"http://127.0.0.1:{PORTS['discovery']}/v1/registration/{service}"],
                            check=False)
        try:
            return json.loads(proc.stdout).get("hosts", [])
        except ValueError:
            return []

    def status_file(self, host):
        try:
            return json.loads(self.read(host, "/run/envoy/status.json") or "{}")
        except ValueError:
            return {}

    def load(self, urls=None, rate=100, duration=30, **kwargs):
        return LoadRun(self, urls or [self.edge_url()], rate, duration, **kwargs)
