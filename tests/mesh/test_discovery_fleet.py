"""
Discovery on lab hosts, through Salt (tests/helpers/discovery_mesh.py): three discovery instances
sharing one Redis, every Envoy listing all three, and registrations that must prove which host
sends them. Load enters foo's ingress from the lab network and crosses foo's egress to the bar
hosts (found through EDS), so a request lost anywhere is counted.

In file order (one mesh for the module; the last test changes the fleet):

1. every Envoy fetches through its retrying discovery listener;
2. the master's ext_pillar gave each host its token (and only the discovery hosts the keys);
   switching the servers off -> audit -> enforce under load refuses no honest registration;
3. forged registrations (another host's address, a service the host may not register, a stolen
   token, no proof, a wrong proof) are refused with 403, counted by reason, and never reach Envoy;
4. every host stopping its check-ins for longer than the TTL empties no service;
5. a minion the master loses (Salt presence) leaves discovery well before its TTL, and the master
   losing most of the fleet at once (its own restart) expires nothing;
6. an instance SIGKILLed, then another host powered off, under service and EDS load: Envoy
   counts no failed fetch, no request fails, hosts keep registering.

Needs root (the lab); about 10 minutes.
"""

import json
import threading
import time

import pytest
from envoy_formula import discovery_tokens

from tests.helpers.discovery_mesh import (
    ALLOWED,
    HEARTBEAT_S,
    INSTANCES,
    KEYS_FILE,
    SIDECARS,
    TOKEN_FILE,
    TTL,
    DiscoveryMesh,
)
from tests.helpers.lab import LAB, VENV_BIN
from tests.helpers.mesh import BARS, PORTS, PYTHON
from tests.helpers.net import wait_for

FETCH_FAILURES = ("update_failure", "update_rejected", "update_empty")
EDS_CLUSTERS = {"foo": "bar", "bar1": "foo", "bar2": "foo"}  # each sidecar's EDS cluster


@pytest.fixture(scope="module")
def fleet(lab_available, tmp_path_factory, built_bundle):
    with DiscoveryMesh(tmp_path_factory.mktemp("discovery-fleet"), built_bundle) as mesh:
        print(f"discovery mesh up: {mesh.timings}")
        yield mesh


class Watch:
    """Every ``interval`` s, in a thread: each EDS cluster's host count in each sidecar's Envoy and
    the hosts discovery lists for foo and bar (what a newly started Envoy would get)."""

    def __init__(self, mesh, interval=1.0):
        self.mesh, self.interval = mesh, interval
        self.envoy_min = {}
        self.listed_min = {}
        self.samples = self.unanswered = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_event.wait(self.interval):
            for host, cluster in EDS_CLUSTERS.items():
                try:
                    status = json.loads(self.mesh.admin(host, "/clusters?format=json"))
                except ValueError:  # the admin did not answer in time (a busy machine): no sample
                    self.unanswered += 1
                    continue
                count = sum(len(c.get("host_statuses", [])) for c in status.get("cluster_statuses", [])
                            if c["name"] == cluster)
                self.envoy_min[host] = min(self.envoy_min.get(host, 99), count)
            for service in ("foo", "bar"):
                answer = self.mesh.discovery_get(f"/v1/registration/{service}")
                if answer is None:  # no instance answered in time (a killed one, a busy machine): no sample
                    self.unanswered += 1
                    continue
                self.listed_min[service] = min(self.listed_min.get(service, 99), len(answer["hosts"]))
            self.samples += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=30)


def fetch_stats(mesh):
    """{host: {stat: value}} of each sidecar's EDS cluster (update_* counters)."""
    return {host: {stat: mesh.stat(host, f"cluster.{cluster}.{stat}")
                   for stat in (*FETCH_FAILURES, "update_attempt", "update_success")}
            for host, cluster in EDS_CLUSTERS.items()}


def deltas(before, after):
    return {host: {stat: after[host][stat] - before[host][stat] for stat in before[host]} for host in before}


def switch_auth(mesh, mode):
    """The network team's pillar edit, then the discovery hosts' highstate one after the other (an
    operator's rollout; their own scheduled highstates may get there first)."""
    mesh.set_lab_pillar({"envoy": {"discovery": {"auth": {"mode": mode}}}})
    for host in INSTANCES:
        mesh.highstate([host])
    commands = wait_for(lambda: (c := mesh.server_commands()) and all(
        c.get(h) and f"--auth {mode} " in c[h] for h in INSTANCES) and c, timeout=60, interval=2,
        what=f"every instance running with --auth {mode}")
    mesh.wait_instances_healthy()
    return commands


def last_check_ins(mesh):
    return {(h["service"], h["ip_address"]): h["last_check_in"] for s in ("foo", "bar") for h in mesh.registrations(s)}


def test_every_envoy_fetches_through_its_retrying_discovery_listener(fleet):
    fleet.wait_path_ready()
    addresses = sorted(f"{fleet.lab.address(h)}:{PORTS['discovery']}" for h in INSTANCES)
    for host in SIDECARS:
        instances = fleet.cluster_hosts(host, "discovery_instances")
        assert sorted(f"{ip}:{PORTS['discovery']}" for ip in instances) == addresses, (host, instances)
        # Fetches arrive through the loopback listener (priority 0 healthy), whose route is the only
        # way to the discovery_instances cluster (the listener answers health checks itself).
        try:
            wait_for(lambda h=host: fleet.stat(h, "cluster.discovery_instances.upstream_rq_completed") > 0,
                     timeout=30, interval=1, what=f"{host}'s EDS fetches through discovery_retry")
        except Exception:
            print(host, fleet.admin(host, "/stats?filter=discovery"))
            raise
        assert fleet.stat(host, f"cluster.{EDS_CLUSTERS[host]}.update_failure") == 0
    # Every instance answers every registration (one Redis), whichever took it.
    bars = sorted(fleet.lab.address(b) for b in BARS)
    for host in INSTANCES:
        assert sorted(h["ip_address"] for h in fleet.discovery_get("/v1/registration/bar", via=host)["hosts"]) == bars
        assert fleet.discovery_get("/v1/registration/foo", via=host)["hosts"]


def test_tokens_reach_every_host_and_the_switch_to_enforce_refuses_no_honest_registration(fleet):
    for host in SIDECARS:
        token = fleet.lab.path(host, TOKEN_FILE)
        assert token.stat().st_mode & 0o777 == 0o600, host
        claims = discovery_tokens.read_claims(token.read_text().strip())
        # The master vouches: the authenticated minion id, the services its pillar allows, its address.
        assert (claims["sub"], claims["svc"], claims["ips"]) == (host, ALLOWED[host], [fleet.lab.address(host)])
        assert not fleet.lab.path(host, "/etc/envoy/discovery/keys").exists(), host
    assert fleet.lab.path("master", KEYS_FILE).stat().st_mode & 0o777 == 0o600
    # While auth is off, the servers need no keys and get none written.
    assert not any(fleet.lab.path(h, "/etc/envoy/discovery/keys").exists() for h in INSTANCES)

    verified_before = fleet.metric("discovery_auth_verified_total")
    load = fleet.load(rate=50, duration=240, name="auth-switch", timeout=5)
    try:
        with Watch(fleet) as watch:
            switch_auth(fleet, "audit")
            time.sleep(3 * 5 + 2)  # three heartbeats of every host, all checked
            audited = fleet.metric_family("discovery_auth_audited_total")
            verified = fleet.metric("discovery_auth_verified_total")
            switch_auth(fleet, "enforce")
            checked_in = last_check_ins(fleet)
            time.sleep(3 * 5 + 2)
            refused = fleet.metric_family("discovery_auth_refused_total")
            forbidden = fleet.metric("discovery_registrations_total", result="forbidden")
            advanced = last_check_ins(fleet)
    finally:
        result = load.stop()
    for host in INSTANCES:
        keys = fleet.lab.path(host, "/etc/envoy/discovery/keys")
        assert discovery_tokens.parse_keys(keys.read_text()) == (fleet.key[0], dict([fleet.key])), host
        assert keys.stat().st_mode & 0o777 == 0o600, host
    secret = fleet.key[1]
    minion_log = "".join(fleet.read(h, "/var/log/salt/minion") for h in fleet.minions)
    assert secret not in minion_log and all(fleet.token(h) not in minion_log for h in SIDECARS)
    assert secret not in fleet.read("master", "/var/log/salt/master")
    assert sum(audited.values()) == 0, audited  # every honest host sent a good token
    assert verified > verified_before
    assert sum(refused.values()) == 0 and forbidden == 0, refused
    assert all(advanced[key] > checked_in[key] for key in checked_in), (checked_in, advanced)
    assert watch.listed_min == {"foo": 1, "bar": 2} and min(watch.envoy_min.values()) >= 1, watch.__dict__
    assert result["failed"] == 0 and result["sent"] > 1000, {k: v for k, v in result.items() if k != "records"}


def test_forged_registrations_are_refused_with_403_counted_and_never_reach_envoy(fleet):
    foo, bar1, bar2 = (fleet.lab.address(h) for h in ("foo", "bar1", "bar2"))
    assert "--auth enforce" in fleet.server_commands()["disc3"]
    bar1_token, foo_token = fleet.token("bar1"), fleet.token("foo")
    forged_signature = bar1_token[:-4] + ("AAAA" if not bar1_token.endswith("AAAA") else "BBBB")
    before = fleet.metric_family("discovery_auth_refused_total")
    forgeries = [
        # (what, from host, service, registered address, token, reason)
        ("bar1 registers foo's address as bar", "bar1", "bar", foo, bar1_token, "address"),
        ("bar1 registers bar2's address", "bar1", "bar", bar2, bar1_token, "address"),
        ("bar1 registers itself as foo, a service not in its manifests", "bar1", "foo", bar1, bar1_token, "service"),
        ("bar1 uses foo's stolen token to register itself as foo", "bar1", "foo", bar1, foo_token, "address"),
        ("bar1 without a token", "bar1", "bar", bar1, None, "missing"),
        ("bar1 with its token's signature altered", "bar1", "bar", bar1, forged_signature, "bad_signature"),
        ("a machine on the network that is no minion", LAB, "bar", fleet.lab.address(LAB), None, "missing"),
    ]
    for what, source, service, ip, token, reason in forgeries:
        status, body = fleet.post_registration(source, service, ip, token)
        assert status == 403 and body.get("reason") == reason, (what, status, body)
        assert body["error"].startswith("registration refused: ") and (not token or token not in str(body)), what
    after = fleet.metric_family("discovery_auth_refused_total")
    for reason in {f[-1] for f in forgeries}:
        label = f'discovery_auth_refused_total{{reason="{reason}"}}'
        assert after.get(label, 0) - before.get(label, 0) == sum(1 for f in forgeries if f[-1] == reason), reason
    # An operator action from the network without an operator token is refused too.
    proc = fleet.lab.run(LAB, ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST",
                               f"http://{fleet.lab.address('disc1')}:{PORTS['discovery']}/v1/sweep?force=true"])
    assert proc.stdout.rsplit("\n", 1)[1] == "403" and '"reason":"missing"' in proc.stdout
    # Nothing forged is listed, and no Envoy ever routes to it.
    time.sleep(3)
    assert fleet.listed("bar") == sorted([bar1, bar2]) and fleet.listed("foo") == [foo]
    assert set(fleet.cluster_hosts("foo", "bar")) == {bar1, bar2}
    assert set(fleet.cluster_hosts("bar1", "foo")) == {foo}
    # The honest hosts still register (a forged request from bar1 did not hurt bar1's own).
    status, body = fleet.post_registration("bar1", "bar", bar1, bar1_token)
    assert status == 200 and body["ip_address"] == bar1


def test_a_registration_outage_empties_no_service(fleet):
    """Every sidecar stops checking in (its minion's scheduler disabled: no heartbeat, no highstate)
    for twice the TTL: discovery holds the services (sweep guard) instead of emptying them."""
    fleet.wait_path_ready()
    before = fetch_stats(fleet)
    held_max = 0
    load = fleet.load(rate=50, duration=TTL * 3 + 60, name="registration-outage", timeout=5)
    try:
        with Watch(fleet) as watch:
            fleet.salt(",".join(SIDECARS), "schedule.disable", tgt_type="list")
            stopped = time.monotonic()
            while time.monotonic() - stopped < 2 * TTL + 10:
                held = fleet.metric("discovery_held_hosts", hosts=["disc1"], service="bar")
                held_max = max(held_max, held)
                time.sleep(2)
            fleet.salt(",".join(SIDECARS), "schedule.enable", tgt_type="list")
            wait_for(lambda: fleet.metric("discovery_held_hosts", hosts=["disc1"], service="bar") == 0
                     and fleet.metric("discovery_hosts", hosts=["disc1"], service="bar") == 2,
                     timeout=60, interval=1, what="check-ins resumed and the hold released")
    finally:
        result = load.stop()
    assert held_max == 2, held_max  # both bar hosts expired and were kept (held), not swept
    # Never empty, also while check-ins resume (the fleet-wide hold ends a grace after that). bar
    # may show one host for the seconds between its two hosts' expiries: one of two expired is an
    # ordinary death, hidden; the second makes it a wave, held, both listed again.
    assert watch.listed_min == {"foo": 1, "bar": watch.listed_min["bar"]} and watch.listed_min["bar"] >= 1, \
        watch.__dict__
    assert watch.unanswered < watch.samples / 10, watch.__dict__
    assert min(watch.envoy_min.values()) >= 1, watch.envoy_min
    # No EDS answer Envoy got was empty, or failed.
    changed = deltas(before, fetch_stats(fleet))
    assert all(stats[s] == 0 for stats in changed.values() for s in FETCH_FAILURES), changed
    assert result["failed"] == 0, {k: v for k, v in result.items() if k != "records"}


def test_a_minion_the_master_loses_leaves_discovery_early(fleet):
    """bar2's salt-minion dies (Envoy and app keep running): the master's presence event runs the
    formula's reactor and runner, and bar2's registration expires a short ``idle_s`` after its last
    check-in instead of the TTL after it. Its Envoy still passes health checks, so it keeps its
    traffic meanwhile: nothing fails."""
    fleet.wait_path_ready()
    bar2 = fleet.lab.address("bar2")
    early_before = fleet.metric("discovery_early_expiries_total")
    load = fleet.load(rate=50, duration=90, name="presence", timeout=5)
    try:
        # A crash: SIGKILL to the minion's process group (a SIGTERMed minion may stop its schedule
        # and still hold its connection to the master while it shuts down).
        fleet.lab.run("bar2", "pid=$(cat /run/salt-minion.pid) && kill -9 -- -$(ps -o pgid= -p $pid | tr -d ' ')")
        stopped = time.monotonic()
        wait_for(lambda: bar2 not in fleet.listed("bar"), timeout=TTL + 15, interval=0.5,
                 what="bar2's registration expiring")
        gone_after = time.monotonic() - stopped
        if gone_after >= TTL - HEARTBEAT_S:
            print(fleet.presence_diagnostics())
        fleet.lab.run("bar2", "/etc/lab/boot.d/10-salt-minion")
        fleet.wait_minions(["bar2"])
        wait_for(lambda: bar2 in fleet.listed("bar"), timeout=60, interval=0.5, what="bar2 registered again")
    finally:
        result = load.stop()
    # The TTL alone would take 25-30 s here (last check-in at most one heartbeat before the stop).
    assert gone_after < TTL - HEARTBEAT_S, gone_after
    assert fleet.metric("discovery_early_expiries_total") > early_before
    assert "salt presence: the master lost bar2" in "".join(fleet.read(h, "/var/log/envoy/envoy-discovery.log")
                                                               for h in INSTANCES)
    assert result["failed"] == 0, {k: v for k, v in result.items() if k != "records"}


def test_the_master_losing_most_of_the_fleet_at_once_expires_nothing(fleet):
    """What a restarted master sees (every minion it remembers is 'lost' until it reconnects): the
    runner holds, and every registration stays."""
    early_before = fleet.metric("discovery_early_expiries_total")
    lost = sorted(fleet.minions)
    fleet.lab.run("master", [str(VENV_BIN / "salt-run"), "event.send", "salt/presence/change",
                             f'data={{"lost": {json.dumps(lost)}, "new": []}}'])
    try:
        wait_for(lambda: "looks like the master's own outage or restart" in fleet.read("master", "/var/log/salt/master"),
                 timeout=30, interval=0.5, what="the runner holding")
    except Exception:
        print(fleet.presence_diagnostics())
        raise
    time.sleep(2 * HEARTBEAT_S)
    assert fleet.metric("discovery_early_expiries_total") == early_before
    assert fleet.listed("bar") == sorted(fleet.lab.address(b) for b in BARS) and fleet.listed("foo")


def test_an_instance_killed_and_another_powered_off_cost_envoy_no_fetch(fleet):
    fleet.wait_path_ready()
    fleet.wait_instances_healthy()
    before = fetch_stats(fleet)
    ejections_before = sum(fleet.stat(h, "cluster.discovery_instances.outlier_detection.ejections_enforced_total")
                           for h in SIDECARS)
    eds_out = fleet.workdir / "eds-load.json"
    urls = [arg for h in INSTANCES for arg in ("--url", f"http://{fleet.lab.address(h)}:{PORTS['discovery']}")]
    eds = fleet.lab.spawn(LAB, [PYTHON, "-m", "tests.helpers.eds_load", *urls, "--service", "bar", "--service", "foo",
                                "--duration", "40", "--concurrency", "8", "--out", str(eds_out)],
                          stdout=fleet.workdir / "eds-load.log")
    load = fleet.load(rate=100, duration=45, name="instance-kill", timeout=5)
    try:
        with Watch(fleet) as watch:
            time.sleep(5)
            fleet.kill_instance("disc1")
            time.sleep(8)
            fleet.lab.power_off("disc2")
            checked_in = last_check_ins(fleet)
            time.sleep(20)
            advanced = last_check_ins(fleet)
    finally:
        result = load.stop()
        eds.wait(timeout=60)
    changed = deltas(before, fetch_stats(fleet))
    ejections = sum(fleet.stat(h, "cluster.discovery_instances.outlier_detection.ejections_enforced_total")
                    for h in SIDECARS) - ejections_before
    print("fetch stats during the kill:", changed, "ejections:", ejections, "eds load:", eds_out.read_text())
    try:
        for host, stats in changed.items():
            assert all(stats[s] == 0 for s in FETCH_FAILURES), (host, stats)
            assert stats["update_attempt"] >= 15, (host, stats)  # Envoy kept polling throughout
        assert ejections >= 1
        assert result["failed"] == 0, {k: v for k, v in result.items() if k != "records"}
        assert min(watch.envoy_min.values()) >= 1 and watch.listed_min == {"foo": 1, "bar": 2}, watch.__dict__
        # Hosts kept registering through the instance left (disc3), each within a heartbeat or two.
        assert all(advanced[key] > checked_in[key] for key in checked_in), (checked_in, advanced)
    finally:
        fleet.lab.power_on("disc2")
        fleet.wait_minions(["disc2"])
        fleet.highstate(["disc1", "disc2"])
        fleet.wait_instances_healthy()
