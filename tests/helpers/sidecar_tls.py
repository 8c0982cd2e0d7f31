"""
One sidecar on loopback with no root and no Salt master, whose egress calls its own service
through its own ingress (bar calls bar, bar allows bar): client -> egress -> ingress -> app. Its
config comes from the bundle's generator and the host settings the formula resolves; with mesh TLS
on (``mode`` permissive or strict, ``send_tls`` implied by strict) the egress -> ingress hop is
mTLS, with the key, certificate and CA files the formula keeps (from a test CA here,
tests/helpers/pki.py; on the lab from Salt's x509 states) and the SDS files ``mesh_identity.publish``
writes. With ``mode="off"`` the same hop is plaintext: the baseline of benchmarks/bench_mtls.py.

Used by tests/integration/test_mesh_tls_sds.py and benchmarks/bench_mtls.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import requests
import yaml
from envoy_bundle.configgen import generate
from envoy_bundle.configgen.inputs import read_manifest_dir
from envoy_formula import host_settings, mesh_identity

from .net import free_port, wait_for
from .pki import TestCA

TRUST_DOMAIN = "mesh.test"
URI = f"spiffe://{TRUST_DOMAIN}/service/bar"


class LocalSidecar:
    def __init__(self, workdir, envoy_bin, mode="strict", send_tls=None, presents=URI):
        """``presents``: the URI SAN of the certificate this host holds for bar (another one makes
        a host that answers in bar's name without being bar: its own egress then refuses it)."""
        workdir = Path(workdir)
        self.mode = mode
        self.ports = {name: free_port() for name in ("ingress", "app", "egress", "admin")}
        mesh_tls = {"mode": mode}
        if mode != "off":
            mesh_tls.update(trust_domain=TRUST_DOMAIN, ca={"minion": "ca1"})
        if send_tls is not None:
            mesh_tls["send_tls"] = send_tls
        pillar = {"roles": ["sidecar"], "lookup": {"root": str(workdir), "admin_port": self.ports["admin"]},
                  "listeners": {"egress": {"port": self.ports["egress"]}, "ingress": {"address": "127.0.0.1"}},
                  "services": {"bar": {"hosts": [f"127.0.0.1:{self.ports['ingress']}"], "callers": ["bar"],
                                       "health_check": False}},
                  "mesh_tls": mesh_tls}
        self.host = host_settings.resolve(pillar, euid=1000)
        for directory in (self.host["manifest_dir"], self.host["log_dir"], self.host["pki_dir"] + "/sds"):
            os.makedirs(directory)
        with open(f"{self.host['manifest_dir']}/bar.yaml", "w") as handle:
            yaml.safe_dump({"service": "bar", "ingress": {"port": self.ports["ingress"], "app_port": self.ports["app"]},
                            "upstreams": [{"service": "bar"}]}, handle)
        self.ca = self.key = self.serial = None
        if mode != "off":
            self.ca = TestCA()
            with open(self.host["pki_dir"] + "/mesh-ca.crt", "w") as handle:
                handle.write(self.ca.pem())
            self.key, self.serial = self.ca.write_identity(self.host["pki_dir"], "bar", presents)
            published = set(mesh_identity.publish(self.host))
            assert published == {"mesh_ca", "mesh_bar"}, published
        facts = {"node_id": f"sidecar-{mode}", "admin_port": self.ports["admin"], "log_dir": self.host["log_dir"]}
        if mode != "off":
            facts["pki_dir"] = self.host["pki_dir"]
        self.config = workdir / "envoy.yaml"
        self.config.write_text(generate(read_manifest_dir(self.host["manifest_dir"]), pillar, facts))
        self.envoy_log = workdir / "envoy.log"
        self.procs = []
        try:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "tests.helpers.app",
                                                "--port", str(self.ports["app"]), "--name", "bar"]))
            with open(self.envoy_log, "w") as log:
                self.procs.append(subprocess.Popen(
                    [envoy_bin, "-c", str(self.config), "--use-dynamic-base-id", "--concurrency", "1",
                     "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=log))
            if presents == URI:
                wait_for(self._ready, timeout=30, what=f"egress -> ingress ({mode}) -> bar")
            else:
                wait_for(self._live, timeout=30, what="Envoy LIVE")
        except BaseException:
            self.close()
            raise

    def _ready(self):
        try:
            return self.get("/ready-check").status_code == 200
        except requests.RequestException:
            return False

    def _live(self):
        try:
            return requests.get(f"http://127.0.0.1:{self.ports['admin']}/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    @property
    def envoy_pid(self):
        return self.procs[1].pid

    @property
    def egress_url(self):
        return f"http://127.0.0.1:{self.ports['egress']}"

    def get(self, path, session=requests):
        return session.get(f"{self.egress_url}{path}", headers={"Host": "bar"}, timeout=5)

    def admin(self, path):
        return requests.get(f"http://127.0.0.1:{self.ports['admin']}{path}", timeout=5).json()

    def stats(self, pattern):
        return {s["name"]: s.get("value") for s in self.admin(f"/stats?format=json&filter={pattern}")["stats"]
                if "name" in s}

    def close(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs = []
