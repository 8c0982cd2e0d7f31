"""
A small real Envoy host for restarter, operations and benchmark runs, without the config generator:
an install dir laid out like an unpacked bundle (``current -> releases/<id>`` holding ``bin/envoy``
linked to the real binary, the ``envoy-restarter`` launcher and ``lib/envoy_bundle``), a static
Envoy config (one HTTP listener with the health_check filter in front of the test app, admin on
127.0.0.1), and the upstream app as a process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .net import free_port, http_get, wait_for

REPO = Path(__file__).resolve().parents[2]
HEALTH_PATH = "/envoy-health"


def make_release(install_dir, release_id, envoy_binary):
    """``<install_dir>/releases/<release_id>`` with bin/envoy -> ``envoy_binary``; returns the path."""
    release = Path(install_dir) / "releases" / release_id
    (release / "bin").mkdir(parents=True, exist_ok=True)
    (release / "lib").mkdir(exist_ok=True)
    envoy = release / "bin" / "envoy"
    if envoy.is_symlink() or envoy.exists():
        envoy.unlink()
    envoy.symlink_to(envoy_binary)
    launcher = release / "bin" / "envoy-restarter"
    launcher.write_text((REPO / "bundle" / "bin" / "envoy-restarter").read_text())
    launcher.chmod(0o755)
    for name, source in (("envoy_bundle", REPO / "bundle" / "envoy_bundle"),
                         ("envoy_formula", REPO / "_utils" / "envoy_formula")):
        lib = release / "lib" / name
        if not lib.exists():
            lib.symlink_to(source)
    (release / "bundle.json").write_text(json.dumps({"id": release_id}) + "\n")
    return release


def switch_current(install_dir, release_id):
    """Point ``current`` at a release atomically, as the bundle state does."""
    current = Path(install_dir) / "current"
    tmp = Path(install_dir) / f".current.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(Path("releases") / release_id)
    os.replace(tmp, current)


def version_wrapper(path, envoy_binary, version):
    """An executable that reports another ``--hot-restart-version`` and otherwise execs envoy."""
    path = Path(path)
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--hot-restart-version" ]; then echo "{version}" >&2; exit 0; fi\n'
        f'exec "{envoy_binary}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def listener(name, port, stat_prefix=None):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": stat_prefix or name,
                "route_config": {"virtual_hosts": [{
                    "name": "app", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }]},
                "http_filters": [
                    {"name": "envoy.filters.http.health_check", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                        "pass_through_mode": False,
                        "headers": [{"name": ":path", "string_match": {"exact": HEALTH_PATH}}],
                    }},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    }


def slow_init(config, seconds):
    """Keep Envoy INITIALIZING for ``seconds``: CDS from an xDS server that never answers, with an
    initial fetch timeout (then Envoy gets LIVE with its static resources)."""
    config["dynamic_resources"] = {"cds_config": {
        "resource_api_version": "V3", "initial_fetch_timeout": f"{seconds}s",
        "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                              "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
    }}
    config["static_resources"]["clusters"].append({
        "name": "xds", "connect_timeout": "0.25s", "type": "STATIC",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]},
    })


def envoy_config(admin_port, listener_port, app_port, extra_listener_ports=(), marker="v1", init_delay_s=0):
    """A static bootstrap (JSON, which is YAML): ``marker`` lands in the node's cluster so configs differ."""
    listeners = [listener("ingress", listener_port)]
    listeners += [listener(f"extra_{port}", port) for port in extra_listener_ports]
    config = {
        "node": {"id": "test", "cluster": f"test-{marker}"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [{
                "name": "app", "connect_timeout": "0.25s", "type": "STATIC",
                "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                 "port_value": app_port}}}}]}]},
            }],
        },
    }
    if init_delay_s:
        slow_init(config, init_delay_s)
    return json.dumps(config, indent=1, sort_keys=True) + "\n"


def write_config(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class UpstreamApp:
    """tests.helpers.app as its own process (own process group: it dies with the fixture)."""

    def __init__(self, port=None, name="app"):
        self.port = port or free_port()
        self.name = name
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.app", "--port", str(self.port),
                                      "--name", self.name], cwd=REPO, start_new_session=True)
        wait_for(lambda: http_get(f"http://127.0.0.1:{self.port}/healthcheck", timeout=1)[0] == 200,
                 timeout=20, what=f"upstream app on {self.port}")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids, timeout=10.0):
    """SIGTERM, then SIGKILL: cleanup for processes a test left (never a broad name match)."""
    pids = [p for p in pids if p and pid_alive(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_status(run_dir):
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return None


def admin_json(admin_port, path, timeout=2.0):
    status, body = http_get(f"http://127.0.0.1:{admin_port}{path}", timeout=timeout)
    return status, (json.loads(body) if status == 200 else body)
