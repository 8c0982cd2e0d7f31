"""
What the mesh tests and ``benchmarks/bench_mesh.py`` do to a running mesh (tests/helpers/mesh.py),
each under open-loop load from the lab network (tests/helpers/openloop.py) into the edge, so every
failed request is counted wherever on the path it failed:

- :func:`power_loss`: a bar host loses power; time until foo's Envoy ejects it; it boots again,
  re-registers, and traffic returns.
- :func:`bundle_upgrade`: a new bundle for one bar host in pillar; its own scheduled highstate
  installs it and hot restarts its Envoy while foo calls it.
- :func:`orderly_shutdown`: ``state.apply envoy.clean`` on a bar host (leave discovery, stop Envoy).
- :func:`latency`: open-loop latency of edge -> foo -> bar against the same apps called directly.

Each returns a dict of figures plus the load generator's result (``load``).
"""

import collections
import datetime
import json
import time

from .mesh import PORTS, SCHEDULE_SECONDS, SCHEDULE_SPLAY
from .net import wait_for
from .openloop import percentile

ENVOY_HOPS = 4  # edge, foo's ingress, foo's egress, bar's ingress


def bar_host(record):
    """The bar host that answered a load record, or None."""
    try:
        return json.loads(record["body"]).get("host")
    except (ValueError, TypeError, AttributeError):
        return None


def absolute(result, record):
    """A record's due time on this machine's monotonic clock."""
    return result["started_monotonic"] + record["due"]


def failures(result, limit=10):
    failed = [r for r in result["records"] if r["status"] != 200]
    kinds = collections.Counter(f"{r['status']} {r['error'] or r['body'][:80]}" for r in failed)
    return {"count": len(failed), "kinds": dict(kinds.most_common(limit))}


def served_by(result, since=None, until=None):
    """Counter of bar hosts that answered requests due in [since, until) (monotonic times)."""
    counts = collections.Counter()
    for record in result["records"]:
        at = absolute(result, record)
        if record["status"] == 200 and (since is None or at >= since) and (until is None or at < until):
            counts[bar_host(record)] += 1
    return counts


def foo_view(mesh, host):
    """How foo's Envoy sees ``host`` in cluster bar: '' healthy, health flags, or None (not listed)."""
    return mesh.cluster_hosts("foo", "bar").get(mesh.lab.address(host))


def egress_flags(mesh, since_wall):
    """Response flags of foo's egress log lines (route bar) written after ``since_wall``, counted."""
    counts = collections.Counter()
    for line in mesh.access_log("foo"):
        if " route=bar " not in line:
            continue
        try:
            wall = datetime.datetime.fromisoformat(line[1:line.index("]")]).timestamp()  # UTC, "...Z"
        except ValueError:
            continue
        if wall >= since_wall:
            counts[line.split(" flags=")[1].split()[0]] += 1
    return dict(counts)


def power_loss(mesh, host="bar2", rate=200, before_s=3.0, after_eject_s=3.0, eject_timeout=30,
               back_timeout=SCHEDULE_SECONDS + SCHEDULE_SPLAY + 90, come_back=True):
    """``come_back=False``: the host stays off (no reboot, no wait for its return)."""
    ip = mesh.lab.address(host)
    retries_before = mesh.stat("foo", "cluster.bar.upstream_rq_retry")
    wall_start = time.time()
    load = mesh.load(rate=rate, duration=before_s + eject_timeout + after_eject_s + back_timeout + 10,
                     name="power-loss", timeout=5)
    try:
        time.sleep(before_s)
        off = time.monotonic()
        mesh.lab.power_off(host)
        seen = wait_for(lambda: foo_view(mesh, host) != "" and (foo_view(mesh, host) or "removed"),
                        timeout=eject_timeout, interval=0.05, what=f"foo's Envoy ejecting {host}")
        ejected = time.monotonic()
        time.sleep(after_eject_s)
        on = time.monotonic()
        on_wall = time.time()
        healthy = None
        if come_back:
            mesh.lab.power_on(host)
            wait_for(lambda: foo_view(mesh, host) == "", timeout=back_timeout, interval=0.25,
                     what=f"{host} healthy again in foo's Envoy")
            healthy = time.monotonic()
            time.sleep(3)
    finally:
        result = load.stop()
    registration = next((h for h in mesh.registrations("bar") if h["ip_address"] == ip), None)
    return {
        "host": host, "rate": rate,
        "failed": failures(result),
        "failed_before_eject": sum(1 for r in result["records"] if r["status"] != 200
                                   and off <= absolute(result, r) < ejected),
        "eject_s": ejected - off, "ejected_as": seen,
        "power_on_to_healthy_s": healthy - on if healthy else None,
        "served_after_back": served_by(result, since=healthy)[host] if healthy else None,
        "served_while_off": served_by(result, since=off + 1, until=on)[host],
        "retries_at_foo": mesh.stat("foo", "cluster.bar.upstream_rq_retry") - retries_before,
        "egress_flags": egress_flags(mesh, wall_start),
        "registration": registration, "power_on_wall": on_wall,
        "load": result,
    }


def bundle_upgrade(mesh, host, bundle, rate=200, settle_s=2.0):
    """Point ``host`` at ``bundle`` (tarball, sha256) in pillar; its scheduled highstate hot restarts
    Envoy onto it. Load runs until the old epoch has drained and exited."""
    tarball, sha256 = bundle
    before = mesh.status_file(host)
    epoch = before.get("live_epoch")
    retries_before = mesh.stat("foo", "cluster.bar.upstream_rq_retry")
    wall_start = time.time()
    drain = {"drain_time_s": 5, "parent_shutdown_time_s": 10}  # pillar/envoy/common.sls for sidecars
    load = mesh.load(rate=rate, duration=settle_s + SCHEDULE_SECONDS + SCHEDULE_SPLAY + 120, name="upgrade",
                     timeout=5)
    try:
        time.sleep(settle_s)
        edited = time.monotonic()
        mesh.set_host_pillar(host, {"envoy": {"bundle": {"source": f"salt://envoy-bundles/{tarball.name}",
                                                         "sha256": sha256}}})
        status = wait_for(lambda: (s := mesh.status_file(host)).get("live_epoch") == epoch + 1 and s,
                          timeout=SCHEDULE_SECONDS + SCHEDULE_SPLAY + 90, interval=0.25,
                          what=f"{host}'s scheduled highstate hot restarting Envoy")
        restarted = time.monotonic()
        # The old epoch drains, then exits at its parent shutdown time.
        wait_for(lambda: len(mesh.status_file(host).get("epochs", [])) == 1, timeout=drain["parent_shutdown_time_s"] + 30,
                 interval=0.25, what=f"{host}'s old epoch exiting")
        drained = time.monotonic()
        time.sleep(settle_s)
    finally:
        result = load.stop()
    live = next(e for e in status["epochs"] if e["epoch"] == epoch + 1)
    return {
        "host": host, "rate": rate, "failed": failures(result),
        "edit_to_new_epoch_s": restarted - edited, "old_epoch_drained_s": drained - restarted,
        "bundle_id": live.get("bundle_id"),
        "served_during_drain": served_by(result, since=restarted, until=drained)[host],
        "served_after": served_by(result, since=drained)[host],
        "retries_at_foo": mesh.stat("foo", "cluster.bar.upstream_rq_retry") - retries_before,
        "egress_flags": egress_flags(mesh, wall_start),
        "load": result,
    }


def orderly_shutdown(mesh, host, rate=200, settle_s=2.0, gone_timeout=60):
    """``salt <host> state.apply envoy.clean`` under load: the formula's way to take a host out."""
    retries_before = mesh.stat("foo", "cluster.bar.upstream_rq_retry")
    wall_start = time.time()
    load = mesh.load(rate=rate, duration=settle_s * 2 + gone_timeout + 120, name="shutdown", timeout=5)
    try:
        time.sleep(settle_s)
        began = time.monotonic()
        # queue=True: a scheduled highstate running right now finishes first (else Salt refuses).
        states = mesh.salt(host, "state.apply", "envoy.clean", "queue=True")[host]
        cleaned = time.monotonic()
        if not isinstance(states, dict):
            raise AssertionError(f"state.apply envoy.clean on {host}: {states}")
        wait_for(lambda: foo_view(mesh, host) != "", timeout=gone_timeout, interval=0.1,
                 what=f"foo's Envoy taking {host} out")
        gone = time.monotonic()
        time.sleep(settle_s)
    finally:
        result = load.stop()
    return {
        "host": host, "rate": rate, "failed": failures(result),
        "states": {s.get("__id__", k): (s.get("result"), s.get("comment")) for k, s in states.items()},
        "clean_s": cleaned - began, "out_of_rotation_s": gone - began,
        "served_after_clean": served_by(result, since=cleaned)[host],
        "retries_at_foo": mesh.stat("foo", "cluster.bar.upstream_rq_retry") - retries_before,
        "egress_flags": egress_flags(mesh, wall_start),
        "registered": [h["ip_address"] for h in mesh.registrations("bar")],
        "load": result,
    }


def latency(mesh, rate=200, seconds=10, rounds=3, warmup_s=3):
    """Open-loop latency of the same request through the mesh (edge -> foo -> bar, 4 Envoy hops)
    and straight to the apps over the lab network (client -> foo app -> bar app, no Envoy), in
    alternating rounds after a warm-up of each; p50/p99 over all rounds."""
    direct = f"http://{mesh.lab.address('foo')}:{PORTS['foo_app']}/direct/bench"
    paths = {"direct": direct, "mesh": mesh.edge_url("/foo/bench")}
    for url in paths.values():
        mesh.load([url], rate=rate, duration=warmup_s, name="warmup").wait()
    latencies = {name: [] for name in paths}
    failed = {name: 0 for name in paths}
    for _ in range(rounds):
        for name, url in paths.items():
            result = mesh.load([url], rate=rate, duration=seconds, name=f"latency-{name}").wait()
            latencies[name] += [r["latency_ms"] for r in result["records"] if r["status"] == 200]
            failed[name] += result["failed"]
    out = {"rate": rate, "seconds": seconds * rounds, "hops": ENVOY_HOPS, "failed": failed}
    for name, values in latencies.items():
        values.sort()
        out[name] = {"n": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
    for pct in ("p50_ms", "p99_ms"):
        out[f"added_per_hop_{pct}"] = (out["mesh"][pct] - out["direct"][pct]) / ENVOY_HOPS
    out["envoy_own_ms"] = envoy_own_time(mesh, "/foo/bench")
    return out


HOP_ROUTES = {"edge": ("edge", "foo"), "foo ingress": ("foo", "local_foo"), "foo egress": ("foo", "bar"),
              "bar ingress": (None, "local_bar")}


def envoy_own_time(mesh, path):
    """Per hop, from the access logs: Envoy's own time (total - upstream) of requests to ``path``,
    p50/p99 in ms; "all" pools the four hops."""
    own = {hop: [] for hop in HOP_ROUTES}
    for host in ("edge", "foo", "bar1", "bar2"):
        for line in mesh.access_log(host):
            if f" {path} " not in line or " 200 " not in line:
                continue
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            hop = next((h for h, (on, route) in HOP_ROUTES.items()
                        if fields.get("route") == route and on in (None, host)), None)
            try:
                own[hop].append((int(fields["total_us"]) - int(fields["upstream_us"])) / 1000.0)
            except (KeyError, ValueError):
                continue
    own["all"] = [v for values in own.values() for v in values]
    out = {}
    for hop, values in own.items():
        values.sort()
        out[hop] = {"n": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
    return out
