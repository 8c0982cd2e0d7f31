"""
Small bundles for tests, and a loopback HTTP server that serves them with injectable faults.

A fake envoy (a shell script answering ``--version``, ``--hot-restart-version`` and
``--mode validate``) keeps these bundles a few KB, so fault tests don't compress the 107 MB binary.
The one real-binary bundle is the session fixture ``built_bundle``.
"""

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from envoy_bundle import builder

FAKE_ENVOY = """#!/bin/sh
# A stand-in for envoy in tests ({marker}): answers like the real binary and starts nothing.
case "$1" in
  --version)
    printf '\\n%s  version: 0000000000000000000000000000000000000000/{version}/Clean/RELEASE/BoringSSL\\n\\n' "$0" ;;
  --hot-restart-version)
    printf '%s' '{hot_restart_version}' >&2 ;;
  --mode)
    if [ "$2" = validate ]; then echo "configuration '$4' OK"; exit 0; fi
    exit 1 ;;
  *)
    echo "fake envoy: unsupported arguments: $*" >&2; exit 1 ;;
esac
"""


def write_fake_envoy(path, version="1.40.0", hot_restart_version="11.104", marker="fake"):
    """Write an executable fake envoy; a different ``marker`` gives a different bundle id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_ENVOY.format(version=version, hot_restart_version=hot_restart_version, marker=marker))
    path.chmod(0o755)
    return path


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_fake_bundle(out_dir, marker="fake", version="1.40.0"):
    """A real ``builder.build`` around a fake envoy: (tarball, sha256 hex)."""
    out_dir = Path(out_dir)
    envoy = write_fake_envoy(out_dir / f"fake-envoy-{marker}", version=version, marker=marker)
    tarball, _sha_file = builder.build(out_dir, envoy_path=envoy)
    return Path(tarball), sha256_of(tarball)


def build_custom_bundle(out_dir, envoy_bytes=None, version="1.40.0"):
    """A consistent bundle (bundle.json matches) the builder itself would refuse to make:
    ``envoy_bytes=None`` leaves out bin/envoy; otherwise bin/envoy holds those bytes."""
    source = builder.default_source_dir()
    members = [*builder.launcher_members(source), *builder.package_members(source)]
    if envoy_bytes is not None:
        members.append(builder.bytes_member("bin/envoy", envoy_bytes, builder.EXEC_MODE))
    tarball, _ = builder.write_bundle(out_dir, members, version, "11.104", "test")
    return Path(tarball), sha256_of(tarball)


def rewrite_member(tarball, out_path, arcname, new_bytes):
    """Copy ``tarball`` with one member's content replaced (bundle.json left as it was)."""
    with tarfile.open(tarball, "r:gz") as src, tarfile.open(out_path, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == arcname:
                data = new_bytes
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return Path(out_path), sha256_of(out_path)


def crafted_tarball(path, entries):
    """A tar.gz from ``entries``: dicts with name and optional type (file, dir, symlink, hardlink,
    chr, fifo), data, linkname, size (a header size larger than the data is allowed for
    oversize tests: the data is padded with zeros)."""
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry["name"])
            info.type = types[entry.get("type", "file")]
            info.mode = entry.get("mode", 0o755 if info.type == tarfile.DIRTYPE else 0o644)
            info.linkname = entry.get("linkname", "")
            data = entry.get("data", b"")
            if info.type == tarfile.REGTYPE:
                info.size = entry.get("size", len(data))
                data = data.ljust(info.size, b"\0")
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return Path(path), sha256_of(path)


class BundleServer:
    """
    Serves files of ``root`` on 127.0.0.1. ``fail(path, *faults)`` queues faults for the next
    requests of that path: an int status (404, 500...) or "truncate" (send half the body, then
    close). ``requests`` logs (path, status) of every request.
    """

    def __init__(self, root):
        self.root = Path(root)
        self.faults = {}
        self.requests = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server._serve(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name):
        return f"{self.base_url}/{name}"

    def fail(self, name, *faults):
        with self._lock:
            self.faults.setdefault("/" + name, []).extend(faults)

    def downloads(self, name):
        """How many GET requests reached ``name``."""
        return sum(1 for path, _status in self.requests if path == "/" + name)

    def _next_fault(self, path):
        with self._lock:
            queue = self.faults.get(path) or []
            return queue.pop(0) if queue else None

    def _serve(self, handler):
        path = handler.path.split("?", 1)[0]
        fault = self._next_fault(path)
        target = self.root / path.lstrip("/")
        if isinstance(fault, int) or not target.is_file():
            status = fault if isinstance(fault, int) else 404
            self.requests.append((path, status))
            handler.send_error(status)
            return
        body = target.read_bytes()
        self.requests.append((path, 200))
        handler.send_response(200)
        handler.send_header("Content-Type", "application/gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if fault == "truncate":
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


