"""
`make demo`: the whole model on this machine, without root.

Two sandbox hosts under .demo/ run the real `salt-call --local` with the example pillar (pillar/):
``front1`` (the edge) and ``svc1`` (a service host where foo and bar run behind their sidecar).
The demo builds a bundle, starts the two apps, drops their manifests, applies the formula on both
hosts, and sends requests through the edge route and the sidecar's egress. Then, with a client
sending requests throughout, it adds a route to the pillar and applies again: the new route is
served without a restart (the epoch stays 0). Then a bootstrap change (a statsd sink) hot restarts
the front (epoch 0 -> 1). Zero failed requests through both.

`make demo-down` (python -m demo down) stops everything; `make demo` again starts afresh.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from envoy_bundle.builder import build, write_pillar

from tests.helpers.load import LoadRunner
from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.sandbox import REPO, SandboxHost

DEMO = REPO / ".demo"
PILLAR = DEMO / "pillar"
APPS = {"foo": 18081, "bar": 18082}        # the apps' own ports (demo/manifests/*.yaml app_port)
HOSTS = {"svc1": {"admin_port": 9902, "base_id": 12}, "front1": {"admin_port": 9901, "base_id": 11}}
FRONT_URL = "http://127.0.0.1:8080"         # pillar/envoy/front.sls listeners:front:http_port
EGRESS_URL = "http://127.0.0.1:9001"        # the sidecar's egress listener
PORTS = [8080, 9001, 9211, 9212, *APPS.values(), *(h["admin_port"] for h in HOSTS.values())]
NEW_ROUTE = {"name": "bar", "match": {"prefix": "/bar"}, "service": "bar", "timeout_ms": 5000}


def say(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def step(rows, name, result):
    rows.append((name, result))
    print(f"   {name}: {result}", flush=True)


def port_in_use(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def make_host(name):
    settings = HOSTS[name]
    return SandboxHost(DEMO / name, minion_id=name, admin_port=settings["admin_port"],
                       base_id=settings["base_id"], pillar_tree=PILLAR,
                       pillar={"envoy": {"lookup": {"supervisor": "daemon"}}})


def start_app(name, port):
    log = open(DEMO / f"app-{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.app", "--port", str(port), "--name", name],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (DEMO / f"app-{name}.pid").write_text(str(proc.pid))
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthcheck")[0] == 200, timeout=20,
             what=f"app {name} on port {port}")


def summarize(states):
    changed = sum(1 for s in states.values() if s.get("changes"))
    failed = [sid for sid, s in states.items() if s.get("result") is False]
    seconds = sum(s.get("duration", 0) for s in states.values()) / 1000.0
    text = f"{len(states)} states, {changed} changed, {len(failed)} failed, {seconds:.1f}s"
    if failed:
        details = "; ".join(f"{sid}: {states[sid].get('comment')}" for sid in failed)
        raise SystemExit(f"highstate failed: {details}")
    return text


def apply(host):
    return host.apply("envoy")


def status(host):
    return host.salt_call("envoy.status")[1]


def up():
    down(quiet=True)
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        raise SystemExit(f"the demo needs these loopback ports free: {busy} (is another demo running? "
                         f"`make demo-down`)")
    rows = []
    DEMO.mkdir(exist_ok=True)
    shutil.copytree(REPO / "pillar", PILLAR)

    say("Build the Envoy bundle (envoy binary + config generator + templates + restarter)")
    started = time.monotonic()
    tarball, sha_file = build(out_dir=DEMO / "out")
    size_mb = Path(tarball).stat().st_size / 1e6
    step(rows, "bundle", f"{Path(tarball).name} ({size_mb:.1f} MB, {time.monotonic() - started:.1f}s)")
    write_pillar(PILLAR / "envoy" / "bundle.sls", tarball, sha_file)

    say("Start the apps foo and bar, and drop their manifests on svc1")
    for name, port in APPS.items():
        start_app(name, port)
    hosts = {name: make_host(name) for name in HOSTS}
    manifest_dir = Path(hosts["svc1"].settings["manifest_dir"])
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for manifest in sorted((REPO / "demo" / "manifests").glob("*.yaml")):
        shutil.copy(manifest, manifest_dir / manifest.name)
    step(rows, "apps", ", ".join(f"{n} on 127.0.0.1:{p}" for n, p in APPS.items()))

    for name in ("svc1", "front1"):
        say(f"salt-call --local saltutil.sync_all, then state.apply envoy on {name}")
        hosts[name].sync()
        step(rows, f"highstate {name}", summarize(apply(hosts[name])))

    say("Requests through the edge and through a sidecar")
    wait_for(lambda: http_get(FRONT_URL + "/foo")[0] == 200, timeout=60, what="the front route /foo")
    code, body = http_get(FRONT_URL + "/foo/hello")
    step(rows, "edge  GET /foo/hello", f"{code} {body.strip()}")
    code, body = http_get(EGRESS_URL + "/ping", headers={"Host": "bar"})
    step(rows, "egress Host: bar GET /ping", f"{code} {body.strip()}")
    code, _ = http_get(FRONT_URL + "/bar")
    step(rows, "edge  GET /bar (no route yet)", str(code))

    front_sls = PILLAR / "envoy" / "front.sls"
    failed = []
    for title, edit, check in (
            ("A pillar edit adds the route /bar -> bar: applied live, no restart, while a client keeps sending",
             lambda data: data["envoy"]["routes"].append(NEW_ROUTE),
             lambda: http_get(FRONT_URL + "/bar")[0] == 200),
            ("A bootstrap change (a statsd sink) hot restarts the front, while the client keeps sending",
             lambda data: data["envoy"].setdefault("observability", {}).update(
                 {"stats": {"sink": "statsd", "address": "127.0.0.1", "port": free_port()}}),
             lambda: True)):
        say(title)
        before = status(hosts["front1"])
        data = yaml.safe_load(front_sls.read_text())
        edit(data)
        front_sls.write_text(yaml.safe_dump(data, sort_keys=False))
        with LoadRunner(FRONT_URL + "/foo/load", connections=20) as load:
            time.sleep(2)
            states = apply(hosts["front1"])
            wait_for(check, timeout=60, what="the change served")
            time.sleep(2)
        after = status(hosts["front1"])
        config = states.get("envoy-config-file-managed", {})
        restart = states.get("envoy-service-running", {})
        step(rows, "highstate front1", summarize(states))
        step(rows, "config", (config.get("comment") or "").splitlines()[0][-120:])
        step(rows, "restart", (restart.get("comment") or "").splitlines()[0] if restart.get("comment") else "")
        step(rows, "front epoch", f"{before.get('epoch')} -> {after.get('epoch')}")
        result = load.result
        step(rows, "client meanwhile", f"{result.total} requests, {result.failed} failed, "
             f"p50 {result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms")
        failed += result.errors[:5]
    code, body = http_get(FRONT_URL + "/bar/hello")
    step(rows, "edge  GET /bar/hello", f"{code} {body.strip()}")

    say("Again, with nothing changed: no restart")
    states = apply(hosts["front1"])
    step(rows, "highstate front1 (no change)", summarize(states))
    step(rows, "front epoch", str(status(hosts["front1"]).get("epoch")))

    print("\n| step | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nEnvoy keeps running: curl {FRONT_URL}/foo, curl -H 'Host: bar' {EGRESS_URL}/, "
          f"admin on 127.0.0.1:{HOSTS['front1']['admin_port']} and :{HOSTS['svc1']['admin_port']}.")
    print("Operate it: .venv/bin/salt-call --local --config-dir .demo/front1/salt-conf envoy.status")
    print("Stop everything: make demo-down")
    if failed:
        print(f"FAILED requests: {failed}", file=sys.stderr)
        return 1
    return 0


def stop_pid_file(path, sig=signal.SIGTERM):
    try:
        pid = int(path.read_text().strip())
        os.killpg(pid, sig)
    except (OSError, ValueError):
        pass
    path.unlink(missing_ok=True)


def down(quiet=False):
    if not DEMO.exists():
        return 0
    for name in HOSTS:
        conf = DEMO / name / "salt-conf"
        if conf.exists():
            host = make_host(name)
            code, out = host.salt_call("envoy.stop", check=False)
            if not quiet:
                print(f"{name}: envoy.stop -> {json.dumps(out)}")
    for pid_file in DEMO.glob("app-*.pid"):
        stop_pid_file(pid_file)
    shutil.rmtree(DEMO, ignore_errors=True)
    if not quiet:
        print("demo stopped and .demo/ removed")
    return 0


def main(argv):
    command = argv[0] if argv else "up"
    if command == "up":
        return up()
    if command == "down":
        return down()
    raise SystemExit(f"usage: python -m demo [up|down] (got {command!r})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
