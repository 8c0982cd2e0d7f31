"""
A real fleet on loopback: a salt-master and two salt-minions (pytest-salt-factories), each minion
a sandbox host with its own root, ports and base id, using the example pillar tree (pillar/).

- A highstate from the master sets up the front minion and the sidecar minion; requests flow through
  the edge route and the sidecar's egress.
- A route edit in the master's pillar reaches the front through the minions' own scheduled
  highstate (nobody calls state.apply), applied without restarting Envoy (files mode).
- Another highstate then changes nothing and restarts nothing.
"""

import getpass
import grp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from envoy_bundle.builder import write_pillar

from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.sandbox import REPO

SCHEDULE_SECONDS = 20
SCHEDULE_SPLAY = 3
NEW_ROUTE = {"name": "bar", "match": {"prefix": "/bar"}, "service": "bar", "timeout_ms": 5000}


class Fleet:
    """Ports, sandbox roots and the pillar tree of the two-minion fleet."""

    def __init__(self, base, bundle):
        self.base = Path(base)
        self.pillar = self.base / "pillar"
        shutil.copytree(REPO / "pillar", self.pillar)
        self.ext = self.base / "ext"
        self.ext.mkdir()
        for sub in ("_modules", "_states", "_utils"):
            (self.ext / sub).symlink_to(REPO / sub)
        # The fleet's own state top, as in any Salt tree that uses the formula.
        (self.ext / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["envoy"]}}))
        tarball, _ = bundle
        write_pillar(self.pillar / "envoy" / "bundle.sls", tarball, f"{tarball}.sha256")
        self.ports = {name: free_port() for name in (
            "front_http", "egress", "foo_ingress", "bar_ingress", "foo_app", "bar_app")}
        self.hosts = {"front1": {"base_id": 31}, "svc1": {"base_id": 32}}
        catalogue = {"foo": {"hosts": [f"127.0.0.1:{self.ports['foo_ingress']}"]},
                     "bar": {"hosts": [f"127.0.0.1:{self.ports['bar_ingress']}"]}}
        for name, host in self.hosts.items():
            host["root"] = self.base / name / "root"
            host["admin_port"] = free_port()
            self.write_pillar(f"hosts/{name}.sls", {"envoy": {
                "lookup": {"root": str(host["root"]), "user": getpass.getuser(), "group": grp.getgrgid(os.getgid()).gr_name,
                           "admin_port": host["admin_port"], "base_id": host["base_id"], "supervisor": "daemon"},
                "schedule": {"method": "minion", "seconds": SCHEDULE_SECONDS, "splay": SCHEDULE_SPLAY},
                "services": catalogue,
                "listeners": {"front": {"http_port": self.ports["front_http"]},
                              "egress": {"port": self.ports["egress"]}},
            }})
        self.drop_manifests()

    def write_pillar(self, rel, data):
        path = self.pillar / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def drop_manifests(self):
        """What foo's and bar's deploys do on svc1: their manifests, with this fleet's ports."""
        manifest_dir = self.hosts["svc1"]["root"] / "etc/envoy/manifest.d"
        manifest_dir.mkdir(parents=True)
        for name in ("foo", "bar"):
            manifest = yaml.safe_load((REPO / "demo/manifests" / f"{name}.yaml").read_text())
            manifest["ingress"]["port"] = self.ports[f"{name}_ingress"]
            manifest["ingress"]["app_port"] = self.ports[f"{name}_app"]
            (manifest_dir / f"{name}.yaml").write_text(yaml.safe_dump(manifest))

    def add_route(self, route):
        front = self.pillar / "envoy/front.sls"
        data = yaml.safe_load(front.read_text())
        data["envoy"]["routes"].append(route)
        front.write_text(yaml.safe_dump(data, sort_keys=False))

    def status_file(self, name):
        path = self.hosts[name]["root"] / "run/envoy/status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def url(self, what):
        return f"http://127.0.0.1:{self.ports[what]}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, built_bundle):
    return Fleet(tmp_path_factory.mktemp("fleet"), built_bundle)


@pytest.fixture(scope="module")
def apps(fleet):
    procs = [subprocess.Popen([sys.executable, "-m", "tests.helpers.app", "--port", str(fleet.ports[f"{n}_app"]),
                               "--name", n], cwd=REPO) for n in ("foo", "bar")]
    for name in ("foo", "bar"):
        wait_for(lambda n=name: http_get(fleet.url(f"{n}_app") + "/healthcheck")[0] == 200, what=f"app {name}")
    yield
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def master(salt_factories, fleet):
    factory = salt_factories.salt_master_daemon(
        "fleet-master",
        overrides={"file_roots": {"base": [str(REPO / "salt"), str(fleet.ext)]},
                   "pillar_roots": {"base": [str(fleet.pillar)]}},
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def minions(master, fleet, apps):
    started = [master.salt_minion_daemon(name) for name in ("front1", "svc1")]
    with started[0].started(), started[1].started():
        cli = master.salt_cli(timeout=300)
        try:
            yield cli
        finally:
            cli.run("envoy.stop", minion_tgt="*")
            cli.run("schedule.purge", minion_tgt="*")


def highstate(cli, **kwargs):
    ret = cli.run("state.highstate", minion_tgt="*", **kwargs)
    assert isinstance(ret.data, dict) and set(ret.data) == {"front1", "svc1"}, ret.stdout or ret.stderr
    for minion, states in ret.data.items():
        assert isinstance(states, dict), f"{minion}: {states}"
        failed = {sid: s["comment"] for sid, s in states.items() if s["result"] is not True}
        assert not failed, f"{minion}: {failed}"
    return ret.data


def record_figure(figure):
    """benchmarks/bench_fleet.py runs this test and reads the figure from ENVOY_BENCH_OUT."""
    out = os.environ.get("ENVOY_BENCH_OUT")
    if out:
        Path(out).write_text(json.dumps(figure))


def changed(states):
    return sorted(s["__id__"] for s in states.values() if s["changes"])


def test_fleet_converges_and_follows_pillar_route_edits(minions, fleet):
    cli = minions
    synced = cli.run("saltutil.sync_all", minion_tgt="*")
    assert synced.returncode == 0, synced.stderr

    # 1. A highstate from the master sets up both minions.
    first = highstate(cli)
    assert "envoy-bundle-installed" in changed(first["front1"])
    assert "envoy-service-running" in changed(first["svc1"])
    wait_for(lambda: http_get(fleet.url("front_http") + "/foo/x")[0] == 200, timeout=60, what="front route /foo")
    assert http_get(fleet.url("front_http") + "/foo/x")[1].startswith("foo GET /foo/x")
    assert http_get(fleet.url("egress") + "/y", headers={"Host": "bar"})[1].startswith("bar GET /y")
    assert http_get(fleet.url("front_http") + "/bar")[0] == 404
    epochs = {name: fleet.status_file(name)["live_epoch"] for name in fleet.hosts}
    assert epochs == {"front1": 0, "svc1": 0}

    # 2. A route is a pillar edit on the master; the minions' own schedule brings it in.
    fleet.add_route(NEW_ROUTE)
    edited = time.monotonic()
    wait_for(lambda: http_get(fleet.url("front_http") + "/bar/z")[0] == 200,
             timeout=3 * (SCHEDULE_SECONDS + SCHEDULE_SPLAY) + 60, interval=0.5, what="the new route on front1")
    elapsed = time.monotonic() - edited
    assert http_get(fleet.url("front_http") + "/bar/z")[1].startswith("bar GET /bar/z")
    assert fleet.status_file("front1")["live_epoch"] == 0, "a route edit is applied without a restart"
    assert fleet.status_file("svc1")["live_epoch"] == 0, "the sidecar's config did not change: no restart"
    print(f"pillar edit -> served on front1 in {elapsed:.1f}s (schedule {SCHEDULE_SECONDS}s + splay {SCHEDULE_SPLAY}s)")
    record_figure({"edit_to_served_s": elapsed, "schedule_s": SCHEDULE_SECONDS, "splay_s": SCHEDULE_SPLAY})

    # 3. Converged: another highstate (queued behind any scheduled one) changes and restarts nothing.
    again = highstate(cli, queue=True)
    assert changed(again["front1"]) == [] and changed(again["svc1"]) == [], again
    assert {name: fleet.status_file(name)["live_epoch"] for name in fleet.hosts} == {"front1": 0, "svc1": 0}


def test_validate_and_render_judge_the_pillar_the_next_highstate_will_use(minions, fleet):
    """An operator checks a pillar edit before the next highstate: the minion must judge the pillar
    on the master now, not the copy it holds in memory."""
    cli = minions
    front = fleet.pillar / "envoy/front.sls"
    good = front.read_text()
    try:
        fleet.add_route({"name": "pay", "match": {"prefix": "/pay"}, "service": "payments"})
        verdict = cli.run("envoy.validate", minion_tgt="front1")
        assert verdict.returncode != 0, verdict.data
        assert "service=payments is not in the service catalogue" in str(verdict.data), verdict.data
        rendered = cli.run("envoy.render", minion_tgt="front1")
        assert "service=payments is not in the service catalogue" in str(rendered.data), rendered.data
    finally:
        front.write_text(good)
    verdict = cli.run("envoy.validate", minion_tgt="front1")
    assert verdict.returncode == 0 and verdict.data["ok"] is True, verdict.data
