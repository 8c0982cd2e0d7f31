"""
Files mode (issue: routes, clusters and listeners change without a restart) through the real
``salt-call --local`` on one sandbox host with both roles and real traffic: the edge routes /foo to
the host's own sidecar ingress in front of a stdlib app (listen backlog 5), the sidecar's egress
reaches bar, and a redis cache goes through the sidecar's redis proxy.

- a route edit, a new cluster, a removed cluster and a changed listener are each applied live
  under load: no new epoch, no failed request;
- test=True names the resources and says no restart is needed;
- a change that validates but Envoy refuses (two listeners swapping ports) is put back, fails with
  Envoy's reason, traffic never notices, and the next run fails fast until the inputs change;
- ten route edits back to back: no new epoch, no failed request;
- an edge route edit leaves the sidecar's long-lived connections (redis, HTTP keep-alive) alone;
- a bootstrap change still hot restarts, and a second one does not wait for the first one's drain;
- a hot restart does not hurt the small-backlog app behind the sidecar;
- switching to static mode and back is a hot restart each, without a failed request.

The tests share the host and run in order.
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.discovery import RedisServer
from tests.helpers.envoy_host import UpstreamApp, kill_pids, read_status
from tests.helpers.load import LoadRunner
from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.sandbox import REPO, SandboxHost, deep_merge

CONFIG, RUNNING = "envoy-config-file-managed", "envoy-service-running"
RESTART = {"drain_time_s": 15, "parent_shutdown_time_s": 25, "live_timeout_s": 20, "stop_timeout_s": 5,
           "full_restart_drain_s": 1, "concurrency": 1}


class StdlibApp:
    """tests.helpers.stdlib_app as its own process: ThreadingHTTPServer, listen backlog 5."""

    def __init__(self, name, backlog=5):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.stdlib_app", "--port", str(self.port),
                                      "--name", name, "--backlog", str(backlog)], cwd=REPO, start_new_session=True)
        wait_for(lambda: http_get(f"http://127.0.0.1:{self.port}/healthcheck", timeout=1)[0] == 200,
                 what=f"stdlib app {name}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Host:
    def __init__(self, base, bundle, tmp):
        tarball, sha256 = bundle
        self.foo_app = StdlibApp("foo")
        self.bar_app, self.baz_app = UpstreamApp(name="bar").start(), UpstreamApp(name="baz").start()
        self.redis = RedisServer(tmp)
        self.ports = {name: free_port() for name in ("front", "egress", "ingress", "cache")}
        self.sandbox = SandboxHost(base, minion_id="files-mode-host")
        self.network = {
            "bundle": {"source": tarball.as_uri(), "sha256": sha256},
            "roles": ["front", "sidecar"],
            "listeners": {"front": {"http_port": self.ports["front"]}, "egress": {"port": self.ports["egress"]}},
            "services": {"foo": {"hosts": [f"127.0.0.1:{self.ports['ingress']}"]},
                         "bar": {"hosts": [f"127.0.0.1:{self.bar_app.port}"]},
                         "baz": {"hosts": [f"127.0.0.1:{self.baz_app.port}"]},
                         "sessions": {"type": "redis", "hosts": [f"127.0.0.1:{self.redis.port}"]}},
            "routes": [{"name": "foo", "match": {"prefix": "/foo"}, "service": "foo"}],
            "restart": RESTART,
        }
        self.set_network(self.network)
        self.manifest_dir = Path(self.sandbox.settings["manifest_dir"])
        self.manifest_dir.mkdir(parents=True)
        self.set_upstreams(["bar"])
        self.sandbox.sync()

    def set_network(self, network):
        self.network = network
        self.sandbox.set_pillar({"envoy": network})

    def set_upstreams(self, names, ingress_port=None):
        manifest = {"service": "foo", "ingress": {"port": ingress_port or self.ports["ingress"],
                                                  "app_port": self.foo_app.port},
                    "upstreams": [{"service": name} for name in names],
                    "caches": [{"name": "sessions", "listen_port": self.ports["cache"]}]}
        (self.manifest_dir / "foo.yaml").write_text(yaml.safe_dump(manifest))

    def apply(self, test=False):
        out = self.sandbox.apply("envoy", test=test)
        return out

    def status(self):
        return read_status(self.sandbox.settings["run_dir"])

    def url(self, what, path="/"):
        return f"http://127.0.0.1:{self.ports[what]}{path}"

    def stat(self, name):
        _, stats = self.sandbox.salt_call("envoy.stats", f"filter=^{name}$")
        return stats.get(name, 0)

    def cleanup(self):
        self.sandbox.salt_call("envoy.stop", check=False, timeout=90)
        status = self.status() or {}
        kill_pids([status.get("restarter_pid"), *[e["pid"] for e in status.get("epochs", [])]])
        for app in (self.foo_app, self.bar_app, self.baz_app, self.redis):
            app.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory, built_bundle):
    host = Host(tmp_path_factory.mktemp("files-mode"), built_bundle, tmp_path_factory.mktemp("redis"))
    try:
        yield host
    finally:
        host.cleanup()


def ok(states):
    failed = {sid: s["comment"] for sid, s in states.items() if s["result"] is not True}
    assert not failed, failed
    return states


def restart_seq(host):
    return host.status()["restart_seq"]


def serves(host, what, path, expect, headers=None):
    code, body = http_get(host.url(what, path), headers=headers)
    return code == 200 and body.startswith(expect)


def test_first_apply_runs_envoy_on_a_bootstrap_and_xds_files(host):
    ok(host.apply())
    config_dir = Path(host.sandbox.settings["config_dir"])
    bootstrap = (config_dir / "envoy.yaml").read_text()
    assert "path_config_source" in bootstrap and "static_resources" in bootstrap
    generations = list((config_dir / "xds").iterdir())
    assert len(generations) == 1
    kinds = sorted(p.relative_to(generations[0]).parts[0] for p in generations[0].rglob("*.yaml"))
    assert kinds == ["cds", "lds", "rds", "rds", "rds"]  # routes of front_http, egress, ingress_foo
    wait_for(lambda: serves(host, "front", "/foo/x", "foo GET /foo/x"), what="edge -> sidecar ingress -> app")
    assert serves(host, "egress", "/y", "bar GET /y", headers={"Host": "bar"})
    client = json.loads((config_dir / "client.json").read_text())
    assert client["egress"] == {"address": "127.0.0.1", "port": host.ports["egress"]}
    assert set(client["upstreams"]) == {"bar"}
    status = host.sandbox.salt_call("envoy.status")[1]
    assert "config applied" in status["summary"], status["summary"]
    assert {v["file"] == v["running"] for v in status["resources"].values()} == {True}


def test_test_mode_names_the_resources_and_says_no_restart(host):
    before = restart_seq(host)
    host.set_network(deep_merge(host.network, {"routes": host.network["routes"] + [
        {"name": "bar", "match": {"prefix": "/bar"}, "service": "bar"}]}))
    out = host.apply(test=True)
    config = out[CONFIG]
    assert config["result"] is None and config["changes"]["restart"] == "none"
    assert config["changes"]["summary"] == ["route bar: added (front_http)"]
    assert "would change without a restart" in config["comment"]
    assert out[RUNNING]["result"] is True and "would not be restarted" in out[RUNNING]["comment"]
    assert not serves(host, "front", "/bar/x", "bar"), "test=True applies nothing"
    assert restart_seq(host) == before


def test_route_edit_new_and_removed_cluster_and_changed_listener_apply_live_under_load(host):
    epoch, seq = host.status()["live_epoch"], restart_seq(host)
    with LoadRunner(host.url("front", "/foo/load"), connections=8, rate=300) as edge, \
            LoadRunner(host.url("egress", "/load"), connections=4, rate=200, headers={"Host": "bar"}) as mesh:
        # A route edit (the pillar from the test=True run above): served at once.
        config = ok(host.apply())[CONFIG]
        assert config["changes"]["restart"] == "none" and "applied live" in config["comment"]
        assert serves(host, "front", "/bar/x", "bar GET /bar/x")
        # A new cluster (foo now calls baz too): egress route and cluster, warmed before use.
        host.set_upstreams(["bar", "baz"])
        config = ok(host.apply())[CONFIG]
        assert set(config["changes"]["summary"]) == {"route baz: added (egress)", "cluster baz: added"}
        assert serves(host, "egress", "/z", "baz GET /z", headers={"Host": "baz"})
        # A removed cluster.
        host.set_upstreams(["bar"])
        config = ok(host.apply())[CONFIG]
        assert set(config["changes"]["summary"]) == {"route baz: removed (egress)", "cluster baz: removed"}
        assert http_get(host.url("egress", "/z"), headers={"Host": "baz"})[0] == 404
        # A changed listener (every HTTP listener's buffer limit).
        host.set_network(deep_merge(host.network, {"listeners": {"buffer_limit_bytes": 65536}}))
        config = ok(host.apply())[CONFIG]
        assert "listener front_http: changed" in config["changes"]["summary"]
        time.sleep(1)
    assert host.status()["live_epoch"] == epoch and restart_seq(host) == seq, "nothing restarted"
    for load in (edge, mesh):
        assert load.result.failed == 0, load.result.errors[:5]
        assert load.result.ok > 200


def test_a_change_envoy_refuses_is_put_back_and_then_fails_fast(host):
    """Two listeners on 0.0.0.0 swapping ports (the edge's and foo's sidecar ingress): each final
    config validates, but Envoy cannot apply the update, as each new address is still held by the
    other listener, so it refuses it."""
    good = host.network
    lds = next(Path(host.sandbox.settings["config_dir"], "xds").rglob("listeners.yaml"))
    before_files, epoch = lds.read_text(), host.status()["live_epoch"]
    front, ingress = host.ports["front"], host.ports["ingress"]
    swapped = deep_merge(good, {"listeners": {"front": {"http_port": ingress}},
                                "services": {"foo": {"hosts": [f"127.0.0.1:{front}"]}}})
    with LoadRunner(host.url("front", "/foo/swap"), connections=4, rate=200) as load:
        host.set_network(swapped)
        host.set_upstreams(["bar"], ingress_port=front)
        out = host.apply()
        config = out[CONFIG]
        assert config["result"] is False and config["changes"] == {}, config
        assert "envoy rejected the lds update" in config["comment"] and "duplicate address" in config["comment"]
        assert "the previous files were put back" in config["comment"]
        assert lds.read_text() == before_files
        again = host.apply()[CONFIG]
        assert again["result"] is False and "Envoy refused these very inputs" in again["comment"]
        assert "duplicate address" in again["comment"] and "envoy.clear_rejected" in again["comment"]
        assert host.sandbox.salt_call("envoy.clear_rejected")[1] is True
        assert "envoy rejected the lds update" in host.apply()[CONFIG]["comment"], "cleared: tried again"
        host.set_network(good)
        host.set_upstreams(["bar"])
        ok(host.apply())
    assert load.result.failed == 0, load.result.errors[:5]
    assert host.status()["live_epoch"] == epoch
    assert serves(host, "front", "/foo/back", "foo")


def test_ten_route_edits_back_to_back_under_load(host):
    seq = restart_seq(host)
    with LoadRunner(host.url("front", "/foo/ten"), connections=8, rate=400) as load:
        for timeout_ms in range(5100, 6100, 100):
            routes = [dict(route, timeout_ms=timeout_ms) for route in host.network["routes"]]
            host.set_network({**host.network, "routes": routes})
            config = ok(host.apply())[CONFIG]
            assert config["changes"]["restart"] == "none", config
    assert restart_seq(host) == seq
    assert load.result.failed == 0, load.result.errors[:5]


def test_an_edge_route_edit_leaves_the_sidecars_long_lived_connections_alone(host):
    cache = socket.create_connection(("127.0.0.1", host.ports["cache"]), timeout=5)
    egress = socket.create_connection(("127.0.0.1", host.ports["egress"]), timeout=5)

    def ping():
        cache.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert cache.recv(64) == b"+PONG\r\n"

    def egress_get():
        egress.sendall(b"GET /kept HTTP/1.1\r\nHost: bar\r\n\r\n")
        assert egress.recv(4096).startswith(b"HTTP/1.1 200")

    ping()
    egress_get()
    drained = host.stat("redis.cache_sessions.downstream_cx_drain_close")
    host.set_network({**host.network, "routes": host.network["routes"] + [
        {"name": "edge-only", "match": {"prefix": "/edge"}, "service": "bar"}]})
    config = ok(host.apply())[CONFIG]
    assert config["changes"]["summary"] == ["route edge-only: added (front_http)"]
    for _ in range(3):  # the very same connections still work
        ping()
        egress_get()
    assert host.stat("redis.cache_sessions.downstream_cx_drain_close") == drained
    cache.close()
    egress.close()


def test_a_bootstrap_change_hot_restarts_and_a_second_does_not_wait_for_the_drain(host):
    """The second restart is queued behind the first one's drain (a third epoch would make Envoy cut
    the requests the draining one still serves): the state returns at once saying so, status says
    which config Envoy serves meanwhile, and the restart happens when the drain ends."""
    epoch = host.status()["live_epoch"]
    with LoadRunner(host.url("front", "/foo/boot"), connections=8, rate=300) as load:
        host.set_network(deep_merge(host.network, {"observability": {"stats": {"sink": "statsd", "prefix": "one"}}}))
        first = ok(host.apply())
        assert first[CONFIG]["changes"]["restart"] == "hot" and first[RUNNING]["changes"]["restart"] == "hot"
        assert first[RUNNING]["changes"]["outcome"] == "success"
        first_done = time.monotonic()
        host.set_network(deep_merge(host.network, {"observability": {"stats": {"sink": "statsd", "prefix": "two"}}}))
        second = ok(host.apply())
        returned_after = time.monotonic() - first_done
        running = second[RUNNING]
        assert running["changes"]["outcome"] == "queued", running
        assert f"once epoch {epoch} has drained" in running["comment"]
        assert "until then Envoy serves epoch" in running["comment"]
        summary = host.sandbox.salt_call("envoy.status")[1]["summary"]
        assert "config on disk NOT running" in summary and "hot restart queued" in summary, summary
        # The queued restart runs when the first one's parent has drained (exits at 25 s).
        wait_for(lambda: host.status()["live_epoch"] == epoch + 2, timeout=60, interval=0.5,
                 what="the queued hot restart")
        time.sleep(1)
    assert returned_after < RESTART["parent_shutdown_time_s"], "the second apply did not wait for the drain"
    assert load.result.failed == 0, load.result.errors[:5]
    settled = ok(host.apply())
    assert all(not state["changes"] for state in settled.values()), "the next run settles: nothing left to do"
    assert "config applied" in host.sandbox.salt_call("envoy.status")[1]["summary"]


def test_a_hot_restart_does_not_hurt_a_small_backlog_app_behind_the_sidecar(host):
    """24 connections through edge -> sidecar ingress -> a ThreadingHTTPServer with backlog 5: the
    new epoch's burst of connections to the app overflows its backlog; connects that fail reached
    nothing, so the ingress retries them."""
    with LoadRunner(host.url("front", "/foo/burst"), connections=24) as load:
        wait_for(lambda: load.result.ok > 500, timeout=30, what="load before the restart")
        out = host.sandbox.salt_call("envoy.hot_restart")[1]
        assert out["result"] is True, out
        wait_for(lambda: load.result.ok > 2000, timeout=60, what="load after the restart")
    assert load.result.failed == 0, load.result.errors[:5]


def test_switching_to_static_and_back_is_a_hot_restart_without_a_failed_request(host):
    with LoadRunner(host.url("front", "/foo/switch"), connections=8, rate=300) as load:
        for mode in ("static", "files"):
            seq = restart_seq(host)
            host.set_network(deep_merge(host.network, {"lookup": {"config_mode": mode}}))
            out = ok(host.apply())
            assert out[RUNNING]["changes"]["restart"] == "hot", out[RUNNING]
            # Queued while the previous restart's parent drains, or done at once.
            wait_for(lambda s=seq: restart_seq(host) == s + 1 and host.status()["last_restart"]["outcome"] == "success",
                     timeout=60, interval=0.5, what=f"the hot restart into {mode} mode")
            bootstrap = Path(host.sandbox.settings["config_file"]).read_text()
            assert ("path_config_source" in bootstrap) == (mode == "files")
    assert load.result.failed == 0, load.result.errors[:5]
