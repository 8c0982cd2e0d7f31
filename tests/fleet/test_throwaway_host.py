"""
The formula on a host with production paths, kitchen-like without Docker: a throwaway unshare host
(tests/helpers/throwaway.py) where /opt/envoy, /etc/envoy, /var/log/envoy and /run/envoy are fresh
tmpfs mounts, /etc is copy-on-write (the formula creates the envoy user for real), and the host has
its own loopback, so Envoy binds its default ports (admin 9901, egress 9001).

Inside it: `salt-call --local state.apply envoy` with the example pillar as the service host svc1
(no sandbox root), a second run that changes nothing, then the verifier suite (tests/verify,
pytest-testinfra with --hosts=local://), the same checks `kitchen verify` runs. Needs root.
"""

import re
import shutil
import sys
import textwrap

import yaml
from envoy_bundle.builder import write_pillar

from tests.conftest import require_root
from tests.helpers.sandbox import REPO
from tests.helpers.throwaway import run_in_throwaway_host

VENV_BIN = f"{sys.prefix}/bin"


def write_salt_tree(base, bundle):
    """A masterless minion config and the example pillar with this run's bundle, under ``base``."""
    tarball, _ = bundle
    pillar = base / "pillar"
    shutil.copytree(REPO / "pillar", pillar)
    write_pillar(pillar / "envoy" / "bundle.sls", tarball, f"{tarball}.sha256")
    (pillar / "hosts").mkdir()
    (pillar / "hosts" / "svc1.sls").write_text(yaml.safe_dump(
        {"envoy": {"schedule": {"method": "cron", "salt_call": f"{VENV_BIN}/salt-call"}}}))
    ext = base / "ext"
    ext.mkdir()
    for sub in ("_modules", "_states", "_utils"):
        (ext / sub).symlink_to(REPO / sub)
    (ext / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["envoy", "envoy._mapdata"]}}))
    conf = base / "salt"
    conf.mkdir()
    (conf / "minion").write_text(yaml.safe_dump({
        "id": "svc1", "file_client": "local",
        "file_roots": {"base": [str(REPO / "salt"), str(ext)]},
        "pillar_roots": {"base": [str(pillar)]},
    }))
    return conf


def test_highstate_on_production_paths_then_verify(tmp_path, built_bundle):
    require_root()
    conf = write_salt_tree(tmp_path, built_bundle)
    manifests = REPO / "demo" / "manifests"
    script = textwrap.dedent(f"""
        cd {REPO}
        salt() {{ {VENV_BIN}/salt-call --local --config-dir {conf} --retcode-passthrough "$@"; }}
        # What foo's and bar's deploys do: start the apps, drop the manifests.
        {sys.executable} -m tests.helpers.app --port 18081 --name foo &
        {sys.executable} -m tests.helpers.app --port 18082 --name bar &
        mkdir -p /etc/envoy/manifest.d && cp {manifests}/foo.yaml {manifests}/bar.yaml /etc/envoy/manifest.d/
        salt saltutil.sync_all > /dev/null
        echo "== first highstate"
        salt state.highstate --out json > {tmp_path}/first.json || {{ cat {tmp_path}/first.json; exit 3; }}
        echo "== second highstate"
        salt state.highstate --out json > {tmp_path}/second.json
        echo "== traffic"
        {sys.executable} -c "import urllib.request as u; r = u.Request('http://127.0.0.1:9001/x', headers={{'Host': 'bar'}}); print(u.urlopen(r, timeout=5).read().decode())"
        echo "== verify"
        ENVOY_VERIFY_HOST=1 {VENV_BIN}/pytest -q -p no:cacheprovider --rootdir {REPO}/tests/verify \\
            --hosts=local:// {REPO}/tests/verify
    """)
    proc = run_in_throwaway_host(script, hostname="svc1", timeout=600)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, output
    first = yaml.safe_load((tmp_path / "first.json").read_text())["local"]
    second = yaml.safe_load((tmp_path / "second.json").read_text())["local"]
    assert all(s["result"] for s in first.values()), output
    created = {s["__id__"] for s in first.values() if s["changes"]}
    assert {"envoy-user-present", "envoy-bundle-installed", "envoy-config-file-managed",
            "envoy-service-running"} <= created
    assert [s["__id__"] for s in second.values() if s["changes"]] == []
    assert "bar GET /x" in proc.stdout
    verify = proc.stdout.split("== verify", 1)[1]
    assert re.search(r"\b10 passed\b", verify) and "failed" not in verify, output
