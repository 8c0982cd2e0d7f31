"""
A lab of hosts on one machine: network-namespace hosts on a bridge, each with its own address,
hostname, process tree, /etc, production paths and /dev/shm, all inside a network namespace the
lab itself creates. Nothing in the lab is connected to a real network: the lab's bridge lives in
the lab namespace, which has no other link and no default route, and so do the hosts.

    with Lab(tmp_path / "lab", ["master", "web1", "web2"]) as lab:
        lab.run("web1", ["hostname"]).stdout            # "web1\\n"
        lab.run("lab", ["curl", f"http://{lab.address('web1')}:8080/"])   # from the lab network
        lab.daemon("web1", "python3 -m http.server 8080", log="/var/log/web.log")
        lab.power_off("web2")                            # SIGKILL everything, link dark first
        lab.power_on("web2")                             # a reboot: same disk, fresh /run

How it works (needs root, ``ip``, ``unshare`` and ``nsenter``; :func:`require_lab` skips with the
reason otherwise):

- **The lab network.** One holder process in its own network namespace (``unshare --net``) owns the
  bridge ``br0`` with the lab's gateway address (``.1``, the "outside" vantage point clients and
  benchmarks use: ``lab.run("lab", ...)``). Addresses come from ``subnet`` (default 10.77.0.0/24);
  host number ``i`` gets ``.10 + i`` and a fixed MAC, so a rebooted host keeps both.
- **A host** is a process tree started by ``unshare --net --mount --uts --ipc --pid --fork
  --mount-proc``: its own loopback and ``eth0`` (a veth whose other end is on the lab bridge),
  hostname, IPC, and PID namespace whose init (pid 1) reaps orphans, so daemons (salt-minion -d,
  the envoy restarter) live and die with the host. ``lab.run``/``lab.spawn`` enter it with
  ``nsenter`` (all of its namespaces; the working directory is the repo by default).
- **Its disk** is a directory under the lab's workdir, kept across reboots: copy-on-write overlays
  of ``/etc`` (so ``useradd`` works per host), ``/opt``, ``/var``, ``/srv`` and ``/root``, where
  the production paths and Salt's (``/opt/envoy``, ``/etc/envoy``, ``/var/log/envoy``,
  ``/etc/salt``, ``/var/cache/salt``, ...) start as fresh empty directories at first boot (the
  machine's own, if any, hidden by overlay whiteouts), so nothing of the real machine shows through
  and nothing a host writes reaches it. They are plain directories, not mount points, so the
  formula's clean path can remove them as on a real host. **Per boot** (lost on power off, as on real hosts):
  tmpfs on ``/run``, ``/tmp`` and ``/dev/shm`` (hot restart shared memory), sysfs for its own
  network. The repo, its ``.venv`` and the Python behind it stay reachable inside every host (also
  when they live under ``/tmp`` or ``/run``, which the host covers); everything runs as root, so a
  0700 checkout is fine.
- **Boot** runs every executable in ``/etc/lab/boot.d/`` (on the host's disk) in name order, as an
  init system starts enabled units: tests drop scripts there (salt-minion, an app), so a rebooted
  host comes back with them.
- **Power off** first takes the host's link down (a dead host sends nothing: no FIN, no RST, so
  peers see what they see when a machine loses power), then SIGKILLs the host's init, which kills
  every process in its PID namespace; the namespaces, mounts and the veth go with the last process.
  **Power on** boots a fresh host with the same name, address, MAC and disk.
- **Teardown** powers every host off, stops the lab holder, checks that no process is left in any
  of the lab's network namespaces (killing stragglers), and removes the disks. The lab's processes
  get SIGKILL if the test process dies (parent death signal), so a crashed test leaves nothing
  running either.

Files the test wants to read or drop on a host are reachable from outside through the host init's
``/proc/<pid>/root`` (``lab.path(host, "/etc/envoy/manifest.d/bar.yaml")``).
"""

import contextlib
import ctypes
import ipaddress
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
LAB = "lab"  # the host name that means the lab network itself (the bridge's namespace)

OVERLAID = ("/etc", "/opt", "/var", "/srv", "/root")
PRODUCTION_PATHS = ("/opt/envoy", "/etc/envoy", "/var/log/envoy", "/var/lib/envoy-discovery")
SALT_PATHS = ("/etc/salt", "/var/cache/salt", "/var/log/salt", "/srv/salt", "/srv/pillar")
PER_BOOT = ("/run", "/tmp")
BOOT_DIR = "/etc/lab/boot.d"
HOST_PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("ip", "unshare", "nsenter", "setsid", "mount")

# pid 1 of a host: reaps every orphan (daemons double-fork), ignores the signals pid 1 ignores.
REAPER = """
import os, time
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.2)
"""

PRELUDE = r"""
set -euo pipefail
mount --make-rprivate /
hostname {name}
disk={disk}
for dir in {overlaid}; do
  [ -d "$dir" ] || continue
  name=$(basename "$dir")
  mkdir -p "$disk/overlay/$name/upper" "$disk/overlay/$name/work"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$disk/overlay/$name/upper,workdir=$disk/overlay/$name/work" "$dir"
done
# First boot: the production paths and Salt's start empty (whatever the machine has there is
# hidden by a whiteout in the overlay; the machine's own files are never touched). Plain
# directories, not mount points, so the formula can remove them (envoy.clean).
if [ ! -e "$disk/.installed" ]; then
  for dir in {private}; do
    [ "$(stat -f -c %T "$(dirname "$dir")")" = overlayfs ] || {{ echo "$dir is not on an overlay" >&2; exit 1; }}
    rm -rf "$dir"
    mkdir -p "$dir"
  done
  touch "$disk/.installed"
fi
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# Paths this host must still reach under /tmp or /run (the repo, its venv, Python): set aside, then
# moved back onto the fresh tmpfs.
keep=({keep})
for i in "${{!keep[@]}}"; do
  mkdir -p "/dev/shm/.lab-keep/$i"
  mount --bind "${{keep[$i]}}" "/dev/shm/.lab-keep/$i"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock
mount -t tmpfs -o mode=1777 tmpfs /tmp
for i in "${{!keep[@]}}"; do
  mkdir -p "${{keep[$i]}}"
  mount --move "/dev/shm/.lab-keep/$i" "${{keep[$i]}}"
done
if [ -d /dev/shm/.lab-keep ]; then rmdir /dev/shm/.lab-keep/* /dev/shm/.lab-keep; fi  # empty now: rmdir, never rm -r
# sysfs of this host's network namespace (its own /sys/class/net), with the machine's cgroup tree
# kept (Envoy reads it at start, and logs a warning without it).
if mountpoint -q /sys/fs/cgroup; then mkdir -p /dev/shm/.lab-cgroup; mount --rbind /sys/fs/cgroup /dev/shm/.lab-cgroup; fi
mount -t sysfs sysfs /sys
if [ -d /dev/shm/.lab-cgroup ]; then mount --move /dev/shm/.lab-cgroup /sys/fs/cgroup; rmdir /dev/shm/.lab-cgroup; fi
echo {name} > /etc/hostname
rm -f /etc/hosts /etc/resolv.conf
cat > /etc/hosts <<'EOF'
{hosts_file}
EOF
# No DNS in the lab: a lookup fails at once on loopback instead of leaving the host.
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > /etc/resolv.conf
ip link set lo up
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
mkdir -p {boot_dir}
echo ready
read -r go
boot() {{ for unit in {boot_dir}/*; do [ -x "$unit" ] && "$unit"; done; }}
(boot </dev/null >/var/log/lab-boot.log 2>&1 &)
exec {python} -c {reaper} </dev/null >/dev/null 2>&1
"""

SWITCH = r"""
set -euo pipefail
ip link set lo up
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add br0 type bridge forward_delay 0
ip addr add {gateway}/{prefix} dev br0
ip link set br0 up
echo ready
exec sleep infinity
"""


class LabError(RuntimeError):
    pass


def missing_requirements():
    """Why a lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: builds network, mount, uts and pid namespaces (unshare) for the lab hosts"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (Debian: iproute2, util-linux)"
    probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


def require_lab():
    """Skip the calling test (with the reason) when a lab cannot run here."""
    import pytest

    why = missing_requirements()
    if why:
        pytest.skip(why)


def _die_with_parent():
    """preexec_fn: SIGKILL this child when the test process dies (nothing outlives a crashed test)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


def _readline(proc, timeout, what):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if line != "ready":
        proc.kill()
        proc.wait(timeout=10)
        raise LabError(f"{what} did not come up: {line!r}")


def _child_of(pid, timeout=10.0):
    """The one child of ``pid`` (unshare --fork's child: pid 1 of the new namespaces)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.01)
    raise LabError(f"process {pid} has no child")


def _netns(pid):
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _keep_paths():
    """What hosts must reach that lives under a directory the host covers with a fresh tmpfs."""
    keep = []
    for path in (REPO, VENV_BIN.parent, Path(sys.base_prefix)):
        real = str(Path(path).resolve())
        if any(real == top or real.startswith(top + "/") for top in PER_BOOT):
            if not any(real.startswith(k + "/") or real == k for k in keep):
                keep.append(real)
    return keep


class Host:
    def __init__(self, lab, name, number):
        self.lab = lab
        self.name = name
        self.address = str(lab.network.network_address + 10 + number)
        self.mac = "02:00:" + ":".join(f"{int(o):02x}" for o in self.address.split("."))
        self.veth = f"vl-{name}"[:15]
        self.disk = lab.workdir / "disks" / name
        self.proc = None   # the unshare process (in our pid namespace)
        self.pid = None    # the host's init, pid 1 in its own pid namespace
        self.netns = set()  # every network namespace this host has had (teardown checks them)
        self.boots = 0

    @property
    def up(self):
        return self.proc is not None and self.proc.poll() is None


class Lab:
    def __init__(self, workdir, hosts, subnet="10.77.0.0/24", keep_disks=False):
        self.workdir = Path(workdir)
        self.network = ipaddress.ip_network(subnet)
        self.gateway = str(self.network.network_address + 1)
        names = list(hosts)
        if LAB in names or len(set(names)) != len(names):
            raise LabError(f"host names must be unique and not {LAB!r}: {names}")
        self.hosts = {name: Host(self, name, i) for i, name in enumerate(names)}
        self.keep_disks = keep_disks
        self.switch = None
        self.switch_pid = None
        self.switch_netns = None

    # --- addresses and paths ---------------------------------------------------------------

    def address(self, host):
        return self.gateway if host == LAB else self.hosts[host].address

    def hosts_file(self):
        lines = ["127.0.0.1 localhost", f"{self.gateway} {LAB}"]
        lines += [f"{h.address} {h.name}" for h in self.hosts.values()]
        return "\n".join(lines)

    def path(self, host, path):
        """``path`` on ``host`` as seen from here (through its init's root)."""
        return Path(f"/proc/{self._host(host).pid}/root") / str(path).lstrip("/")

    def _host(self, host):
        h = self.hosts[host]
        if not h.up:
            raise LabError(f"host {host} is powered off")
        return h

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        why = missing_requirements()
        if why:
            raise LabError(why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        script = SWITCH.format(gateway=self.gateway, prefix=self.network.prefixlen)
        self.switch = subprocess.Popen(["unshare", "--net", "--fork", "--kill-child", "bash", "-c", script],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=open(self.workdir / "switch.log", "wb"), preexec_fn=_die_with_parent)
        _readline(self.switch, 30, "the lab network")
        self.switch_pid = _child_of(self.switch.pid)
        self.switch_netns = _netns(self.switch_pid)
        for name in self.hosts:
            self.power_on(name)

    def power_on(self, host):
        """Boot ``host`` (first boot or a reboot): fresh namespaces, /run, /tmp and /dev/shm; the same
        disk, address and MAC; then everything in /etc/lab/boot.d runs."""
        h = self.hosts[host]
        if h.up:
            raise LabError(f"host {host} is already on")
        h.disk.mkdir(parents=True, exist_ok=True)
        private = [*PRODUCTION_PATHS, *SALT_PATHS]
        assert all(any(p.startswith(top + "/") for top in OVERLAID) for p in private), private
        prelude = PRELUDE.format(
            name=h.name, disk=shlex.quote(str(h.disk)), overlaid=" ".join(OVERLAID), private=" ".join(private),
            keep=" ".join(shlex.quote(k) for k in _keep_paths()), hosts_file=self.hosts_file(),
            boot_dir=BOOT_DIR, python=shlex.quote(sys.executable), reaper=shlex.quote(REAPER))
        console = open(self.workdir / f"console-{h.name}-{h.boots}.log", "wb")
        h.proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child", "--mount-proc",
             "bash", "-c", prelude],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=console, preexec_fn=_die_with_parent,
            env=self.env(), cwd="/")
        console.close()
        try:
            _readline(h.proc, 60, f"host {host}")
        except LabError as exc:
            raise LabError(f"{exc}: {(self.workdir / f'console-{h.name}-{h.boots}.log').read_text()[-2000:]}") from None
        h.pid = _child_of(h.proc.pid)
        h.netns.add(_netns(h.pid))
        h.boots += 1
        self._wire(h)
        h.proc.stdin.write(b"go\n")
        h.proc.stdin.close()

    def _ip(self, *args, pid=None):
        cmd = ["nsenter", f"--target={pid or self.switch_pid}", "--net", "ip", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def _wire(self, h):
        """A veth: eth0 in the host (its address and MAC), its peer on the lab bridge."""
        deadline = time.monotonic() + 10
        while h.veth in self._ip("-o", "link", "show") and time.monotonic() < deadline:
            time.sleep(0.05)  # the previous boot's veth goes with its namespace, asynchronously
        with contextlib.suppress(LabError):
            self._ip("link", "del", h.veth)
        self._ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "address", h.mac,
                 "netns", str(h.pid))
        self._ip("addr", "add", f"{h.address}/{self.network.prefixlen}", "dev", "eth0", pid=h.pid)
        self._ip("link", "set", "eth0", "up", pid=h.pid)
        self._ip("link", "set", h.veth, "master", "br0", "up")

    def power_off(self, host, timeout=30):
        """Power loss: the link goes dark first (nothing more leaves the host, not even the FIN or
        RST of its dying sockets), then every process in the host's PID namespace gets SIGKILL."""
        h = self.hosts[host]
        if not h.up:
            return
        with contextlib.suppress(LabError):
            self._ip("link", "set", h.veth, "down")
        with contextlib.suppress(ProcessLookupError):
            os.kill(h.pid, signal.SIGKILL)
        try:
            h.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            h.proc.kill()
            h.proc.wait(timeout=timeout)
        if h.proc.stdout:
            h.proc.stdout.close()
        h.proc = None
        h.pid = None

    def reboot(self, host):
        self.power_off(host)
        self.power_on(host)

    def close(self):
        """Every host off, the lab network gone, no process left in any of the lab's namespaces,
        the disks removed (unless ``keep_disks``)."""
        for name in self.hosts:
            with contextlib.suppress(Exception):
                self.power_off(name)
        if self.switch is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.switch.pid, signal.SIGKILL)
            self.switch.wait(timeout=30)
            if self.switch.stdout:
                self.switch.stdout.close()
            self.switch = None
        left = self.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not self.keep_disks:
            shutil.rmtree(self.workdir / "disks", ignore_errors=True)
        if left:
            raise LabError(f"processes left in the lab's namespaces (killed now): {left}")

    def namespaces(self):
        """Every network namespace inode the lab has created."""
        inodes = {ino for h in self.hosts.values() for ino in h.netns}
        if self.switch_netns:
            inodes.add(self.switch_netns)
        return inodes

    def leftovers(self):
        """Pids of processes still in one of the lab's network namespaces."""
        inodes = self.namespaces()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if _netns(int(entry)) in inodes:
                        found.append(int(entry))
        return found

    # --- running things in hosts -----------------------------------------------------------

    def _enter(self, host, cwd):
        if host == LAB:
            if not self.switch_pid:
                raise LabError("the lab network is not up")
            return ["nsenter", f"--target={self.switch_pid}", "--net", "--"]
        h = self._host(host)
        return ["nsenter", f"--target={h.pid}", "--net", "--mount", "--uts", "--ipc", "--pid",
                f"--wd={cwd}", "--"]

    @staticmethod
    def _argv(cmd):
        return ["bash", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]

    @staticmethod
    def env(extra=None):
        return {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **(extra or {})}

    def run(self, host, cmd, check=True, timeout=120, input=None, env=None, cwd=REPO):
        """Run ``cmd`` (argv list, or a bash command line) on ``host`` (or ``"lab"``: the lab network,
        from the bridge's address); returns the CompletedProcess (text)."""
        argv = self._enter(host, cwd) + self._argv(cmd)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                              env=self.env(env), cwd=cwd)
        if check and proc.returncode != 0:
            raise LabError(f"on {host}: {cmd} -> {proc.returncode}\nstdout: {proc.stdout[-3000:]}\n"
                           f"stderr: {proc.stderr[-3000:]}")
        return proc

    def spawn(self, host, cmd, stdout=None, env=None, cwd=REPO, **popen):
        """Start ``cmd`` on ``host`` and return its Popen (the nsenter process: its exit status is the
        command's). Output goes to ``stdout`` (a path here) or a pipe."""
        argv = self._enter(host, cwd) + self._argv(cmd)
        out = open(stdout, "ab") if stdout else subprocess.PIPE
        try:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if stdout else subprocess.PIPE,
                                    env=self.env(env), cwd=cwd, start_new_session=True, **popen)
        finally:
            if stdout:
                out.close()

    def daemon(self, host, cmd, log, env=None):
        """Start ``cmd`` detached on ``host`` (its own session, reparented to the host's init), output
        to ``log`` on the host; returns once it is started."""
        line = cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)
        self.run(host, f"mkdir -p {shlex.quote(os.path.dirname(log))} && "
                       f"setsid -f {line} </dev/null >>{shlex.quote(log)} 2>&1", env=env)

    def install_boot_unit(self, host, name, script):
        """Drop an executable ``/etc/lab/boot.d/<name>`` on ``host``: it runs at every boot."""
        path = self.path(host, f"{BOOT_DIR}/{name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/bash\n" + script.strip() + "\n")
        path.chmod(0o755)
        return f"{BOOT_DIR}/{name}"

    def processes(self, host):
        """{pid: argv} of the processes in ``host`` (pids as the host sees them)."""
        out = self.run(host, ["ps", "-eo", "pid=,args="]).stdout
        return {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in out.splitlines() if line.strip()}
