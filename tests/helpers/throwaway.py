"""
A throwaway host, kitchen-like without Docker: ``unshare --mount --pid --net --uts --fork`` gives a
host with its own loopback, hostname, process tree and /dev/shm. /etc, /opt, /var and /run get a
copy-on-write overlay, and the production paths a fresh tmpfs, so the formula runs with its real
default paths (/opt/envoy, /etc/envoy, ...) and leaves nothing behind. When the script ends, the PID
namespace ends, and every process started in it (restarter, envoy, apps) dies with it.

Needs root; callers skip with a clear reason otherwise (see tests/conftest.py require_root).
"""

import subprocess
import textwrap

OVERLAID = ("/etc", "/opt", "/var", "/run")
# Written by the formula; /tmp/salt_mapdata_dump is where envoy._mapdata dumps its settings.
PRODUCTION_PATHS = ("/opt/envoy", "/etc/envoy", "/var/log/envoy", "/run/envoy", "/tmp/salt_mapdata_dump")

PRELUDE = r"""
set -euo pipefail
mount --make-rprivate /
ip link set lo up
hostname {hostname}
scratch=/mnt  # hidden under a tmpfs in this mount namespace only
mount -t tmpfs tmpfs "$scratch"
for dir in {overlaid}; do
  name=$(basename "$dir")
  mkdir -p "$scratch/$name/upper" "$scratch/$name/work"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$scratch/$name/upper,workdir=$scratch/$name/work" "$dir"
done
for dir in {production}; do
  mkdir -p "$dir"
  mount -t tmpfs -o mode=0755 tmpfs "$dir"
done
# Hot restart shared memory lives here: keep it per host.
mount -t tmpfs tmpfs /dev/shm
"""


def run_in_throwaway_host(script, hostname="envoy-host", timeout=900, env=None):
    """Run a bash ``script`` as the throwaway host's first process; returns CompletedProcess."""
    prelude = PRELUDE.format(hostname=hostname, overlaid=" ".join(OVERLAID),
                             production=" ".join(PRODUCTION_PATHS))
    cmd = ["unshare", "--mount", "--pid", "--net", "--uts", "--fork", "--mount-proc",
           "bash", "-c", prelude + textwrap.dedent(script)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
