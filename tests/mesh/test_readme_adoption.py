"""
The README's "Using the formula in a Salt tree", word for word, on lab hosts (issue 10): a
salt-master ``salt`` and minions ``front1`` (the edge), ``foo1`` and ``foo2`` (hosts of ``foo``).

Every README block marked ``<!-- readme-step: NAME -->`` is used here exactly as written: shell
blocks run on the master in this checkout (``bash -euo pipefail``), ``file=PATH`` blocks are
written to that path (on the master, or on ``hosts=``). What the README leaves to the reader's own
fleet is the only thing this test adds: minions that know their master, keys accepted, a way to
restart the master, and the foo app itself. After each step the test checks what the README says
it achieves; the last check is that no step of the README went unused.
"""

import json
import re
import shlex
import time
import types

import pytest
import yaml

from tests.helpers.lab import LAB, REPO, VENV_BIN, Lab, require_lab
from tests.helpers.mesh import PYTHON, LoadRun
from tests.helpers.net import wait_for

README = REPO / "README.md"
STEP = re.compile(r"<!-- readme-step: (?P<name>[\w-]+)(?P<attrs>[^>]*?) -->\n```(?P<lang>\w+)\n(?P<body>.*?)```",
                  re.S)
HOSTS = ("salt", "front1", "foo1", "foo2")
MINIONS = ("front1", "foo1", "foo2")
FOOS = ("foo1", "foo2")
FOO_APP_PORT = 8081


def readme_steps():
    """{name: step} of the README's marked blocks, in order."""
    steps = {}
    for m in STEP.finditer(README.read_text()):
        attrs = dict(a.split("=", 1) for a in m.group("attrs").split())
        assert m.group("name") not in steps, f"README: two steps named {m.group('name')}"
        steps[m.group("name")] = types.SimpleNamespace(name=m.group("name"), lang=m.group("lang"),
                                                       body=m.group("body"), file=attrs.get("file"),
                                                       hosts=(attrs.get("hosts") or "salt").split(","))
    return steps


def test_readme_steps_are_well_formed():
    """Runs anywhere: every step is a shell block, or a file block of valid YAML with a path."""
    steps = readme_steps()
    assert {"publish", "formula", "master-config", "converge", "route-push", "leave"} <= set(steps)
    for step in steps.values():
        if step.file:
            assert step.lang == "yaml" and step.file.startswith("/"), step
            assert isinstance(yaml.safe_load(step.body), dict), step.name
        else:
            assert step.lang == "sh", step


class Adoption:
    """The README's steps on a lab, and what they should achieve."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.lab = Lab(workdir / "lab", HOSTS)
        self.steps = readme_steps()
        self.used = set()
        self.outputs = {}

    def step(self, name):
        self.used.add(name)
        return self.steps[name]

    def do(self, name):
        """Run a shell step on the master, or write a file step where it says."""
        step = self.step(name)
        if step.file:
            for host in step.hosts:
                path = self.lab.path(host, step.file)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step.body)
            return None
        proc = self.lab.run("salt", ["bash", "-euo", "pipefail", "-c", step.body], check=False, timeout=900)
        self.outputs[name] = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README step {name} failed ({proc.returncode}):\n{self.outputs[name][-6000:]}"
        return proc.stdout

    # --- what the README takes as given: a Salt fleet --------------------------------------------

    def start_fleet(self):
        self.lab.start()
        self.lab.path("salt", "/etc/salt/master").write_text(yaml.safe_dump({
            "interface": self.lab.address("salt"), "auto_accept": True, "log_level_logfile": "info"}))
        for minion in MINIONS:
            self.lab.path(minion, "/etc/salt/minion").write_text(yaml.safe_dump({
                "id": minion, "master": "salt", "acceptance_wait_time": 1, "acceptance_wait_time_max": 2,
                "random_reauth_delay": 0, "log_level_logfile": "info"}))
        self.lab.run("salt", f"{VENV_BIN}/salt-master -d")
        # (/var/run links to /run: look from inside the host, not through lab.path)
        wait_for(lambda: self.lab.run("salt", ["test", "-s", "/run/salt-master.pid"], check=False).returncode == 0,
                 timeout=30, what="salt-master")

    def restart_master(self):
        pid = "/run/salt-master.pid"
        self.lab.run("salt", f"pid=$(cat {pid}); kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.2; done; "
                             f"{VENV_BIN}/salt-master -d")

    def start_minions(self):
        for minion in MINIONS:
            self.lab.run(minion, f"{VENV_BIN}/salt-minion -d")
        wait_for(lambda: all(self.salt(m, "test.ping", timeout=5).get(m) is True for m in MINIONS),
                 timeout=120, interval=1, what="minions answering")

    def deploy_foo_app(self):
        """What foo's own deploy does besides dropping the manifest: run the app."""
        for host in FOOS:
            argv = shlex.join([PYTHON, "-m", "tests.helpers.mesh_apps", "bar", "--port", str(FOO_APP_PORT),
                               "--log", "/var/log/apps/foo.log"])
            self.lab.daemon(host, argv, log="/var/log/apps/foo.out")
            wait_for(lambda h=host: self.lab.run(h, ["curl", "-sf", f"http://127.0.0.1:{FOO_APP_PORT}/healthcheck"],
                                                 check=False).returncode == 0, timeout=30, what=f"foo's app on {host}")

    # --- looking -----------------------------------------------------------------------------

    def salt(self, target, fun, *args, timeout=120):
        argv = [f"{VENV_BIN}/salt", "--out=json", "--static", f"--timeout={timeout}", target, fun, *args]
        proc = self.lab.run("salt", argv, check=False, timeout=timeout + 60)
        try:
            return json.loads(proc.stdout or "{}")
        except ValueError:
            return {}

    def via_front(self, path):
        proc = self.lab.run(LAB, ["curl", "-s", "-m", "5", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                                  f"http://{self.lab.address('front1')}:8080{path}"], check=False)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), body

    def summaries(self):
        return {m: self.salt(m, "envoy.summary").get(m) for m in MINIONS}

    def envoy_processes(self, host):
        return [p for p in self.lab.processes(host).values() if "envoy-restarter" in p or "/bin/envoy " in p + " "]


@pytest.fixture(scope="module")
def adoption(tmp_path_factory):
    require_lab()
    if not (REPO / ".venv/bin/envoy-bundle").exists():
        pytest.skip("the README's steps run in a checkout with its .venv (make venv); there is none here")
    run = Adoption(tmp_path_factory.mktemp("adoption"))
    try:
        run.start_fleet()
        yield run
    finally:
        run.lab.close()


def test_readme_adoption(adoption):
    a, lab = adoption, adoption.lab

    # 1. Publish a bundle: the archive where the master serves it, the pillar that names it.
    a.do("publish")
    archives = sorted(lab.path("salt", "/srv/salt/envoy-bundles").glob("envoy-bundle-*.tar.gz"))
    assert len(archives) == 1, archives
    bundle_pillar = yaml.safe_load(lab.path("salt", "/srv/pillar/envoy/bundle.sls").read_text())
    assert bundle_pillar["envoy"]["bundle"]["source"] == f"salt://envoy-bundles/{archives[0].name}"

    # 2. The formula alone: no checkout, venv or tests in what the master serves.
    a.do("formula")
    served = {p.name for p in lab.path("salt", "/srv/formulas/envoy").iterdir()}
    salt_dirs = {d for d in ("_modules", "_states", "_utils", "_runners", "_pillar") if (REPO / d).is_dir()}
    assert served == {"envoy"} | salt_dirs, served

    # 3. The master's roots and the state top file, then a master restart.
    a.do("master-config")
    a.do("state-top")
    a.restart_master()
    a.start_minions()

    # 4. The network team's pillar; 5. the service team's manifest, and the app it fronts.
    for name in ("pillar-top", "pillar-common", "pillar-sidecar", "pillar-front"):
        a.do(name)
    a.do("manifest")
    a.deploy_foo_app()

    # 6. Sync and converge: every highstate green, Envoy LIVE everywhere, the schedule in place.
    out = a.do("converge")
    failed = [int(n) for n in re.findall(r"^Failed:\s+(\d+)", out, re.M)]
    assert len(failed) == len(MINIONS) and not any(failed), out[-6000:]
    summaries = a.summaries()
    assert all(str(s).startswith("LIVE, epoch 0") for s in summaries.values()), summaries
    listed = a.salt("*", "cp.list_master")
    for minion in MINIONS:
        files = listed[minion]
        assert not [f for f in files if f.startswith((".venv", ".git", "tests/", "pillar/", "salt/"))], files[:50]
        schedule = yaml.safe_load(a.salt(minion, "schedule.list")[minion] or "{}")["schedule"]
        job = schedule["envoy-highstate"]
        assert (job["function"], job["minutes"], job["splay"]) == ("envoy.scheduled_highstate", 15, 300), job
    # The three highstates run at once: when the front's first health check of a foo host comes
    # before that host's Envoy listens, the host is checked again after no_traffic_interval_ms (5 s
    # by default) and needs healthy_threshold passes; meanwhile the other host answers everything.
    answered_by, errors = set(), []

    def both_foo_hosts_answer():
        for i in range(20):
            code, body = a.via_front(f"/foo/hello-{i}")
            if code != 200:
                errors.append((code, body))
            else:
                answered_by.add(json.loads(body)["host"])
        return answered_by == set(FOOS)

    wait_for(both_foo_hosts_answer, timeout=150, interval=2, what="both foo hosts answering")
    assert not errors, errors[:5]  # meanwhile the healthy host answered every request

    # 7. A route edit under load: validated against the pillar on the master, a dry run, then the
    # push; served without a restart and without a failed request.
    load = LoadRun(types.SimpleNamespace(workdir=a.workdir, lab=lab),
                   [f"http://{lab.address('front1')}:8080/foo/under-load"], rate=100, duration=120, name="route-edit")
    try:
        time.sleep(1)
        a.do("route-edit")
        out = a.do("route-push")
        validated, dry_run, pushed = re.split(r"^front1:\n(?=-)", out, flags=re.M)
        assert re.search(r"ok:\s+True", validated), validated
        assert "would change without a restart" in dry_run and "route foo-api: added" in dry_run, dry_run[-4000:]
        assert "changed without a restart" in pushed and re.search(r"^Failed:\s+0", pushed, re.M), pushed[-4000:]
        wait_for(lambda: a.via_front("/api/foo/hello")[0] == 200, timeout=30, what="the new route served")
        code, body = a.via_front("/api/foo/hello")
        assert json.loads(body)["path"] == "/hello", body  # prefix_rewrite: /
    finally:
        result = load.stop()
    assert result["sent"] > 300 and result["failed"] == 0, {k: result[k] for k in ("sent", "failed")}
    assert a.summaries()["front1"].startswith("LIVE, epoch 0"), "a route edit must not restart Envoy"

    # 8. front1 leaves: out of the top file, then envoy.clean drains (15 s here) and stops it.
    a.do("leave-top")
    began = time.monotonic()
    out = a.do("leave")
    took = time.monotonic() - began
    assert re.search(r"^Failed:\s+0", out, re.M), out[-6000:]
    assert "drain" in out.lower() and took >= 15, (took, out[-4000:])
    assert not a.envoy_processes("front1"), lab.processes("front1")
    assert a.via_front("/foo/after")[0] == 0
    left = sorted(p.name for p in lab.path("front1", "/etc/envoy").iterdir())
    assert left == ["manifest.d"], f"clean left config files behind: {left}"
    assert "envoy-highstate" not in (yaml.safe_load(a.salt("front1", "schedule.list")["front1"] or "{}")
                                     or {}).get("schedule", {})
    # The foo hosts go on; a highstate no longer puts Envoy back on front1.
    assert all(a.summaries()[f].startswith("LIVE") for f in FOOS)
    a.salt("front1", "state.highstate")
    assert not a.envoy_processes("front1")

    assert a.used == set(a.steps), f"README steps this test never ran: {set(a.steps) - a.used}"
