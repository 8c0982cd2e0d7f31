"""
envoy_client's own overhead per call, against plain ``requests.Session`` to the same egress in the
same run: the real envoy with a sidecar-like egress (tests/helpers/egress.py: trusted loopback,
response flags header) in front of the test app (tests/helpers/app.py, its own process).

Both sides make sequential keep-alive GETs with ``Host: <service>``; the plain side sends the same
router headers and x-request-id as literals, so the ratio is what the library itself costs (config
lookup, policy and bounds, headers, error mapping), not Envoy's work. Rounds alternate between the
two and the median round counts (the machine is shared). A third figure runs the client inside an
inbound context (propagated headers and a deadline), and a fourth times the client's work without
any I/O (policy and headers only).

    .venv/bin/python -m benchmarks client
"""

import statistics
import tempfile
import time
import uuid
from pathlib import Path

import requests
from envoy_client import Client, inbound

from tests.helpers.egress import EnvoyProcess, egress_config, write_client_json
from tests.helpers.envoy_host import UpstreamApp
from tests.helpers.net import free_port

ROUNDS = 9
CALLS_PER_ROUND = 300
WARMUP = 200
SERVICE = "bar"
INBOUND = {"x-request-id": "bench-0af7651916cd43dd", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
           "x-b3-traceid": "80f198ee56343ba8", "x-b3-spanid": "e457b5a2e4d86bd1", "x-b3-sampled": "1",
           "x-envoy-expected-rq-timeout-ms": "600000"}


def envoy_binary():
    from envoy_bundle.builder import default_envoy_path

    return str(default_envoy_path())


def per_call_us(call, calls):
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def run():
    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    app = UpstreamApp(name=SERVICE).start()
    admin, egress = free_port(), free_port()
    envoy = EnvoyProcess(envoy_binary(), work / "envoy", egress_config(admin, egress, {SERVICE: app.port})).start()
    client_json = write_client_json(work / "client.json", {
        "format": 1, "egress": {"address": "127.0.0.1", "port": egress},
        "bounds": {"timeout_ms": {"min": 10, "max": 60000}, "retries": {"min": 0, "max": 3}},
        "upstreams": {SERVICE: {"timeout_ms": 15000, "retries": 1, "retry_on": "5xx,connect-failure,refused-stream"}},
    })
    client = Client(config_path=client_json)
    session = requests.Session()
    session.trust_env = False
    url = f"http://127.0.0.1:{egress}/v1/rides"
    router = {"Host": SERVICE, "x-envoy-upstream-rq-timeout-ms": "15000", "x-envoy-max-retries": "1",
              "x-envoy-retry-on": "5xx,connect-failure,refused-stream"}

    def plain():
        response = session.get(url, headers={**router, "x-request-id": str(uuid.uuid4())}, timeout=(1.0, 16.0))
        if response.status_code != 200:
            raise RuntimeError(f"plain requests got {response.status_code}")

    def with_client():
        client.get(SERVICE, "/v1/rides")

    try:
        per_call_us(plain, WARMUP)
        cx_before = envoy.stat("http.egress.downstream_cx_total")  # the plain session's connection is open
        per_call_us(with_client, WARMUP)
        rounds = {"plain": [], "client": [], "propagating": []}
        for _ in range(ROUNDS):
            rounds["plain"].append(per_call_us(plain, CALLS_PER_ROUND))
            rounds["client"].append(per_call_us(with_client, CALLS_PER_ROUND))
            with inbound(INBOUND):
                rounds["propagating"].append(per_call_us(with_client, CALLS_PER_ROUND))
        cx_after = envoy.stat("http.egress.downstream_cx_total")
        # The client's own work without I/O: resolving the policy and building the headers.
        local = min(per_call_us(lambda: client.policy(SERVICE).headers(), 2000) for _ in range(5))
    finally:
        client.close()
        session.close()
        envoy.stop()
        app.stop()

    plain_us = statistics.median(rounds["plain"])
    client_us = statistics.median(rounds["client"])
    propagating_us = statistics.median(rounds["propagating"])
    calls = ROUNDS * CALLS_PER_ROUND
    note = f"median of {ROUNDS} alternating rounds of {CALLS_PER_ROUND} sequential keep-alive GETs through Envoy"
    return [
        {"metric": "plain requests.Session per call (baseline)", "value": plain_us, "unit": "us", "note": note},
        {"metric": "envoy_client per call", "value": client_us, "unit": "us", "baseline": plain_us,
         "ratio": client_us / plain_us, "goal": "<= 1.15", "note": f"overhead {client_us - plain_us:.0f} us per call"},
        {"metric": "envoy_client per call, propagating an inbound context", "value": propagating_us, "unit": "us",
         "baseline": plain_us, "ratio": propagating_us / plain_us, "goal": "<= 1.15",
         "note": "x-request-id, 4 tracing headers and a deadline captured by inbound()"},
        {"metric": "envoy_client work per call without I/O (policy + headers)", "value": local, "unit": "us",
         "note": "Client.policy(service).headers(), best of 5 x 2000"},
        {"metric": "egress connections opened by the client", "value": cx_after - cx_before,
         "unit": "connections", "goal": "1", "note": f"{2 * calls + WARMUP} sequential calls from one Client "
                                                     "(Envoy's http.egress.downstream_cx_total)"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
