"""
`make lint` step (python -m tests.show_sls): ``state.show_sls`` of ``envoy``, every component's
clean SLS, ``envoy.clean`` and ``envoy._mapdata`` must render, through the real ``salt-call --local``,
with every example pillar: the example tree pillar/
as the front host and as a service host, and the documented pillar.example. Prints the state ids
per case; exits 1 naming the case that failed.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from tests.helpers.sandbox import REPO, SandboxHost

SLS = ("envoy", "envoy._mapdata", "envoy.clean", "envoy.identity.ca",
       *(f"envoy.{component}.clean" for component in ("schedule", "discovery", "service", "identity", "config",
                                                      "bundle")))
# pillar.example once more with mesh TLS on, so the identity states render too.
MESH_TLS_ON = {"mode": "strict", "roles": ["sidecar", "front"]}


def show_sls(host, sls):
    code, out = host.salt_call("state.show_sls", sls, check=False)
    if code != 0 or not isinstance(out, dict):
        raise RuntimeError(out if isinstance(out, str) else yaml.safe_dump(out))
    return sorted({state.get("__id__", sid) for sid, state in out.items()})


def cases(base):
    tree = base / "pillar"
    shutil.copytree(REPO / "pillar", tree)
    for minion in ("front1", "svc1"):
        yield f"pillar/ as {minion}", SandboxHost(base / minion, minion_id=minion, pillar_tree=tree)
    example = yaml.safe_load((REPO / "pillar.example").read_text())
    yield "pillar.example", SandboxHost(base / "example", minion_id="example", pillar=example)
    example["envoy"]["mesh_tls"]["mode"] = MESH_TLS_ON["mode"]
    example["envoy"]["roles"] = MESH_TLS_ON["roles"]
    yield "pillar.example, mesh TLS strict", SandboxHost(base / "example-mtls", minion_id="example-mtls",
                                                         pillar=example)


def main():
    failed = []
    with tempfile.TemporaryDirectory(prefix="show-sls-") as tmp:
        for name, host in cases(Path(tmp)):
            host.sync()
            for sls in SLS:
                try:
                    ids = show_sls(host, sls)
                    print(f"{name}, {sls}: {len(ids)} states: {', '.join(ids)}")
                except RuntimeError as exc:
                    failed.append(f"{name} {sls}")
                    print(f"{name}: state.show_sls {sls} failed:\n{exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
