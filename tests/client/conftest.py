"""A real Envoy laid out like a sidecar host's egress (and an ingress in front of local apps), the
upstream apps it routes to, and the client.json the client reads: shared by the client tests."""

import itertools
from types import SimpleNamespace

import pytest
from envoy_client import Client

from tests.helpers.egress import EnvoyProcess, Recorder, egress_config, write_client_json
from tests.helpers.net import free_port

_ids = itertools.count()

# bar and qux are in client.json, baz is not (library defaults, global bounds), down has no app
# behind it. qux's route has its own retry policy (2 retries), as the formula's routes do.
CLIENT_JSON = {
    "format": 1,
    "egress": {"address": "127.0.0.1", "port": None},
    "bounds": {
        "timeout_ms": {"min": 10, "max": 10000},
        "per_try_timeout_ms": {"min": 10, "max": 10000},
        "retries": {"min": 0, "max": 3},
    },
    "upstreams": {
        "bar": {"timeout_ms": 4000, "per_try_timeout_ms": None, "retries": 1,
                "retry_on": "5xx,connect-failure,refused-stream",
                "bounds": {"timeout_ms": {"min": 10, "max": 8000}, "retries": {"min": 0, "max": 2}}},
        "qux": {"timeout_ms": 2000, "retries": 1},
        "down": {"retries": 0},
    },
}


@pytest.fixture(scope="session")
def mesh(envoy_bin, tmp_path_factory):
    work = tmp_path_factory.mktemp("client-mesh")
    recorders = {name: Recorder(name).start() for name in ("bar", "baz", "qux")}
    services = {name: rec.port for name, rec in recorders.items()}
    services["down"] = free_port()
    apps = {"wsgi": free_port(), "asgi": free_port()}
    admin, egress, ingress = free_port(), free_port(), free_port()
    envoy = EnvoyProcess(envoy_bin, work / "envoy", egress_config(
        admin, egress, services, ingress_port=ingress, apps=apps, ingress_timeout_ms=3000,
        route_retries={"qux": 2})).start()
    document = {**CLIENT_JSON, "egress": {"address": "127.0.0.1", "port": egress}}
    client_json = write_client_json(work / "client.json", document)
    client = Client(config_path=client_json)
    try:
        yield SimpleNamespace(envoy=envoy, recorders=recorders, egress_port=egress, admin_port=admin,
                              ingress_port=ingress, app_ports=apps, client_json=client_json,
                              document=document, client=client, work=work)
    finally:
        client.close()
        envoy.stop()
        for rec in recorders.values():
            rec.stop()


@pytest.fixture
def uid(request):
    """A token unique to this test, to make the paths it sends (and counts) its own."""
    return f"{request.node.name.replace('[', '-').replace(']', '')}-{next(_ids)}"
