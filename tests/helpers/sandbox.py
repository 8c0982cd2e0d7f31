"""
A masterless sandbox host: a directory holding a minion config, a pillar and a host root whose
paths the formula uses through ``envoy:lookup:root``. Runs the real ``salt-call --local``
without privileges.

    host = SandboxHost(tmp_path / "web1", pillar={"envoy": {"bundle": {...}}})
    out = host.apply("envoy.bundle")     # {state_id: {"result": ..., "changes": ...}}
"""

import getpass
import grp
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .net import free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def deep_merge(base, extra):
    """Recursive dict merge: ``extra`` wins; neither input is modified."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class SaltCallError(RuntimeError):
    pass


class SandboxHost:
    def __init__(self, base, minion_id="sandbox", pillar=None, admin_port=None, base_id=None,
                 extra_file_roots=(), pillar_tree=None, minion_config=None):
        """``pillar_tree``: a pillar dir laid out like the repo's pillar/ (top.sls targeting
        ``hosts.<minion id>``); this host's sandbox settings then go to ``hosts/<id>.sls`` there
        instead of a pillar of its own. ``minion_config``: more minion options (e.g. ``ext_pillar``)."""
        self.base = Path(base)
        self.minion_id = minion_id
        self.root = self.base / "root"
        self.conf_dir = self.base / "salt-conf"
        self.pillar_tree = Path(pillar_tree) if pillar_tree else None
        self.pillar_dir = self.pillar_tree or self.base / "pillar"
        self.ext_dir = self.base / "ext"
        for path in (self.root, self.conf_dir, self.pillar_dir, self.ext_dir):
            path.mkdir(parents=True, exist_ok=True)
        # Custom modules reach the minion through the file server, as in a real Salt tree; a small
        # dir of links keeps the repo's .venv out of the file server's walk.
        for sub in ("_modules", "_states", "_runners", "_utils", "_pillar"):
            link = self.ext_dir / sub
            if not link.exists():
                link.symlink_to(REPO / sub)
        self.admin_port = admin_port or free_port()
        # Hot restart shared memory and sockets are keyed by base id: one per live Envoy on the
        # machine. The admin port is unique among live hosts, so it makes a unique default.
        base_id = self.admin_port if base_id is None else base_id
        self.base_id = base_id
        # Tests may serve their own small SLS trees next to the formula (e.g. a static config).
        self.extra_file_roots = [str(p) for p in extra_file_roots]
        self.minion_config = dict(minion_config or {})
        self.lookup = {
            "root": str(self.root),
            "user": getpass.getuser(),
            "group": grp.getgrgid(os.getgid()).gr_name,
            "admin_port": self.admin_port,
            "base_id": base_id,
        }
        self.pillar = {}
        self._write_minion_config()
        self.set_pillar(pillar or {})

    @property
    def settings(self):
        """The host paths as map.jinja computes them for this sandbox."""
        r = str(self.root)
        return {
            "install_dir": r + "/opt/envoy",
            "config_dir": r + "/etc/envoy",
            "config_file": r + "/etc/envoy/envoy.yaml",
            "manifest_dir": r + "/etc/envoy/manifest.d",
            "log_dir": r + "/var/log/envoy",
            "run_dir": r + "/run/envoy",
        }

    def _write_minion_config(self):
        config = {
            "id": self.minion_id,
            "file_client": "local",
            "root_dir": str(self.base / "salt-root"),
            "user": getpass.getuser(),
            "file_roots": {"base": [str(REPO / "salt"), str(self.ext_dir), *self.extra_file_roots]},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "log_level_logfile": "debug",
            "state_output": "mixed",
            **self.minion_config,
        }
        (self.conf_dir / "minion").write_text(yaml.safe_dump(config))

    def set_pillar(self, pillar):
        """Replace this host's own pillar (``envoy:lookup`` for the sandbox is always merged in)."""
        self.pillar = deep_merge({"envoy": {"lookup": self.lookup}}, pillar)
        if self.pillar_tree:
            host_file = self.pillar_tree / "hosts" / f"{self.minion_id}.sls"
            host_file.parent.mkdir(parents=True, exist_ok=True)
            host_file.write_text(yaml.safe_dump(self.pillar, sort_keys=True))
            return
        (self.pillar_dir / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["sandbox"]}}))
        (self.pillar_dir / "sandbox.sls").write_text(yaml.safe_dump(self.pillar, sort_keys=True))

    def salt_call(self, *args, check=True, timeout=600, env=None):
        """Run ``salt-call --local`` with JSON output; returns (retcode, the minion's return)."""
        cmd = [
            str(VENV_BIN / "salt-call"), "--local", "--config-dir", str(self.conf_dir),
            "--out", "json", "--retcode-passthrough", "--log-level", "quiet", *map(str, args),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        try:
            ret = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
        except (ValueError, KeyError):
            ret = proc.stdout
        if check and proc.returncode != 0:
            raise SaltCallError(f"{' '.join(cmd)} -> {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc.returncode, ret

    def sync(self):
        return self.salt_call("saltutil.sync_all")[1]

    def apply(self, sls, test=False, check=False, pillar=None):
        """``state.apply sls``; returns {state id: result dict} keyed by the state's ``__id__``."""
        args = ["state.apply", sls]
        if test:
            args.append("test=True")
        if pillar:
            args.append("pillar=" + json.dumps(pillar))
        retcode, ret = self.salt_call(*args, check=check)
        if not isinstance(ret, dict):
            raise SaltCallError(f"state.apply {sls} returned no state results: {ret!r}")
        return {value.get("__id__", key): value for key, value in ret.items()}
