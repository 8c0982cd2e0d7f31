"""
Execution module ``envoy``: install Envoy bundles, render and validate this host's config,
and operate the running Envoy (status, hot restart, drain, health check, stats).

Host settings come from three places, later ones winning:
the production defaults below (the same as ``salt/envoy/parameters/defaults.yaml``),
pillar/minion config ``envoy:lookup``, and keyword arguments (the formula's states pass the
values of ``map.jinja`` explicitly). ``root`` prefixes every path, so a whole host can live in a
sandbox directory without privileges.
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "envoy"

DEFAULTS = {
    "root": "",
    "install_dir": "/opt/envoy",
    "config_dir": "/etc/envoy",
    "manifest_dir": "/etc/envoy/manifest.d",
    "log_dir": "/var/log/envoy",
    "run_dir": "/run/envoy",
    "user": "envoy",
    "group": "envoy",
    "base_id": 0,
    "admin_port": 9901,
    "supervisor": "auto",
    "keep_releases": 3,
}
PATH_KEYS = ("install_dir", "config_dir", "manifest_dir", "log_dir", "run_dir")


def __virtual__():
    return __virtualname__


def settings(**overrides):
    """
    The effective host settings: defaults, then ``envoy:lookup``, then ``overrides``
    (unknown keys are ignored so states can pass ``map.jinja``'s whole dict).
    Paths come back with the sandbox ``root`` applied.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.settings
    """
    merged = dict(DEFAULTS)
    lookup = __salt__["config.get"]("envoy:lookup", {}) or {}
    for source in (lookup, overrides):
        merged.update({k: v for k, v in source.items() if k in DEFAULTS and v is not None})
    root = merged["root"] or ""
    for key in PATH_KEYS:
        path = merged[key]
        # map.jinja already applied the root to what states pass in: never prefix twice.
        if root and not path.startswith(root.rstrip("/") + "/"):
            path = root.rstrip("/") + path
        merged[key] = path
    merged["config_file"] = os.path.join(merged["config_dir"], "envoy.yaml")
    merged["current_dir"] = os.path.join(merged["install_dir"], "current")
    return merged


# --- bundles (issue: foundation and the Envoy bundle) ------------------------------------------
# A bundle is a tar.gz built by `envoy-bundle build` (bundle/envoy_bundle/builder.py): bin/envoy,
# the launchers, lib/envoy_bundle/** and bundle.json. Each goes to <install_dir>/releases/<id>/ and
# <install_dir>/current points at one of them. Nothing reaches releases/ or `current` before the
# archive hash, every member, and `bin/envoy --version` have been checked.

BUNDLE_FORMAT = 1
BUNDLE_MANIFEST = "bundle.json"
INSTALL_RECORD = ".install.json"  # written by the installer beside the members: archive sha256, times
RELEASES = "releases"
BUNDLE_TMP_PREFIX = ".tmp-bundle-"
BUNDLE_LIMITS = {"max_member_bytes": 512 << 20, "max_total_bytes": 1 << 30, "max_members": 10000}
HTTP_TIMEOUTS = (10, 60)  # connect, read (longest silence between bytes), seconds
HTTP_ATTEMPTS = 4
HTTP_BACKOFF = 0.5  # seconds before the 2nd attempt, doubled for each next one
STALE_TMP_SECONDS = 3600
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_BUNDLE_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_]*-[0-9a-f]{12}")


class _RetryableDownloadError(Exception):
    """A connection problem or a 5xx answer: worth another attempt."""


def _redact(source):
    """The source for messages: no credentials, no query string (signed URLs carry tokens)."""
    parts = urllib.parse.urlsplit(str(source))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="..." if parts.query else ""))


def _require_sha256(source, sha256):
    value = str(sha256 or "").strip().lower()
    if not value:
        raise CommandExecutionError(
            f"refusing to install bundle {_redact(source)}: a sha256 is required for every bundle "
            "source (pillar envoy:bundle:sha256, or sha256=...)"
        )
    if not _SHA256_RE.fullmatch(value):
        raise CommandExecutionError(f"bundle {_redact(source)}: sha256 {sha256!r} is not 64 hex digits")
    return value


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _read_json_file(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json_atomic(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def _current_release_id(host):
    link = host["current_dir"]
    if not os.path.islink(link):
        return None
    return os.path.basename(os.readlink(link).rstrip("/")) or None


def _release_info(host, bundle_id, current_id):
    path = os.path.join(host["install_dir"], RELEASES, bundle_id)
    try:
        manifest = _read_json_file(os.path.join(path, BUNDLE_MANIFEST))
    except (OSError, ValueError):
        manifest = {}
    try:
        record = _read_json_file(os.path.join(path, INSTALL_RECORD))
    except (OSError, ValueError):
        record = {}
    return {
        "bundle_id": bundle_id,
        "envoy_version": manifest.get("envoy_version"),
        "hot_restart_version": manifest.get("hot_restart_version"),
        "source_commit": manifest.get("source_commit"),
        "archive_sha256": record.get("archive_sha256"),
        "installed_at": record.get("installed_at"),
        "activated_at": record.get("activated_at"),
        "current": bundle_id == current_id,
        "path": path,
    }


def _brief(info):
    return {"bundle_id": info["bundle_id"], "envoy_version": info["envoy_version"]} if info else None


def bundles(**kwargs):
    """
    The installed bundle releases, most recently activated first: id, envoy version, archive
    sha256, install/activation times and whether it is ``current``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.bundles
    """
    host = settings(**kwargs)
    releases_dir = os.path.join(host["install_dir"], RELEASES)
    try:
        names = [n for n in os.listdir(releases_dir)
                 if _BUNDLE_ID_RE.fullmatch(n) and os.path.isdir(os.path.join(releases_dir, n))]
    except FileNotFoundError:
        return []
    current_id = _current_release_id(host)
    infos = [_release_info(host, name, current_id) for name in names]
    return sorted(infos, key=lambda i: (i["activated_at"] or i["installed_at"] or "", i["bundle_id"]),
                  reverse=True)


def current_bundle(**kwargs):
    """
    The ``bundle.json`` of the current release, or None when no bundle is installed.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.current_bundle
    """
    host = settings(**kwargs)
    try:
        return _read_json_file(os.path.join(host["current_dir"], BUNDLE_MANIFEST))
    except (OSError, ValueError):
        return None


def bundle_plan(source, sha256=None, **kwargs):
    """
    What ``install_bundle`` would do, decided without downloading anything: ``action`` is
    ``none`` (a bundle with this archive sha256 is current), ``switch`` (an installed release
    has it: re-verify and point ``current`` at it) or ``download``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.bundle_plan https://repo/envoy-bundle-1.40.0-abc.tar.gz sha256=<hex>
    """
    digest = _require_sha256(source, sha256)
    installed = bundles(**kwargs)
    current = next((i for i in installed if i["current"]), None)
    if current and current["archive_sha256"] == digest:
        return {"action": "none", "sha256": digest, "old": _brief(current), "release": _brief(current)}
    match = next((i for i in installed if i["archive_sha256"] == digest), None)
    return {"action": "switch" if match else "download", "sha256": digest, "old": _brief(current),
            "release": _brief(match)}


def _fetch_bundle(source, work_dir, label, limits):
    """A local path to the archive; salt:// goes through cp.cache_file, http(s) to ``work_dir``."""
    parts = urllib.parse.urlsplit(str(source))
    if parts.scheme == "salt":
        cached = __salt__["cp.cache_file"](source)
        if not cached:
            raise CommandExecutionError(f"bundle {label} was not found on the Salt file server")
        return cached
    if parts.scheme in ("http", "https"):
        dest = os.path.join(work_dir, "bundle.tar.gz")
        _http_download(source, dest, label, limits["max_total_bytes"])
        return dest
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise CommandExecutionError(f"bundle {label}: file:// URLs must name a local path")
        path = urllib.request.url2pathname(urllib.parse.unquote(parts.path))
        if not os.path.isfile(path):
            raise CommandExecutionError(f"bundle {label}: no such file {path}")
        return path
    raise CommandExecutionError(
        f"bundle {label}: unsupported source; use salt://, https://, http:// or file://"
    )


def _http_download(url, dest, label, max_bytes):
    """Stream ``url`` to ``dest``; retries connection errors, truncation and 5xx with backoff."""
    import requests  # only hosts that download over HTTP pay for the import

    delay, last_error = HTTP_BACKOFF, None
    for attempt in range(1, HTTP_ATTEMPTS + 1):
        try:
            _http_download_once(requests, url, dest, label, max_bytes)
            return
        except _RetryableDownloadError as exc:
            last_error = exc
            log.warning("bundle download %s: attempt %d/%d failed: %s", label, attempt, HTTP_ATTEMPTS, exc)
        if attempt < HTTP_ATTEMPTS:
            time.sleep(delay)
            delay *= 2
    raise CommandExecutionError(
        f"downloading bundle {label} failed after {HTTP_ATTEMPTS} attempts: {last_error}"
    )


def _http_download_once(requests, url, dest, label, max_bytes):
    import urllib3

    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUTS) as resp:
            status = f"HTTP {resp.status_code} {resp.reason}"
            if resp.status_code >= 500:
                raise _RetryableDownloadError(status)
            if resp.status_code != 200:
                raise CommandExecutionError(f"downloading bundle {label}: {status} (not retried)")
            expected = resp.headers.get("Content-Length")
            received = 0
            with open(dest, "wb") as handle:
                # raw bytes: a server's Content-Encoding must not change what is hashed
                for chunk in resp.raw.stream(1 << 20, decode_content=False):
                    received += len(chunk)
                    if received > max_bytes:
                        raise CommandExecutionError(
                            f"downloading bundle {label}: larger than the {max_bytes}-byte limit"
                        )
                    handle.write(chunk)
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as exc:
        raise _RetryableDownloadError(f"connection broken mid-body, download truncated ({exc})") from exc
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError) as exc:
        raise _RetryableDownloadError(f"timed out ({exc})") from exc
    except requests.ConnectionError as exc:
        raise _RetryableDownloadError(f"connection failed ({exc})") from exc
    except requests.RequestException as exc:
        raise CommandExecutionError(f"downloading bundle {label}: {exc}") from exc
    if expected is not None and expected.isdigit() and received != int(expected):
        raise _RetryableDownloadError(f"connection closed after {received} of {expected} bytes (truncated)")


def _sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_archive_sha256(path, expected, label):
    actual = _sha256_of(path)
    if actual != expected:
        raise CommandExecutionError(
            f"bundle {label}: sha256 mismatch (expected {expected}, got {actual}); not installed"
        )


def _member_name(member, label):
    """The member's normalized relative path; refuses absolute paths and `..`."""
    name = member.name
    if name.startswith("/") or re.match(r"[A-Za-z]:[\\/]", name):
        raise CommandExecutionError(f"unsafe bundle {label}: member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CommandExecutionError(f"unsafe bundle {label}: member {name!r} contains '..'")
    if not parts:
        raise CommandExecutionError(f"unsafe bundle {label}: a member has an empty name ({name!r})")
    return "/".join(parts)


def _check_member_type(member, name, seen, label):
    if member.isfile() or member.isdir():
        return
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise CommandExecutionError(
                f"unsafe bundle {label}: symlink {name!r} -> {target!r} points outside the release"
            )
        return
    if member.islnk():
        target = posixpath.normpath(member.linkname)
        if not (target in seen and seen[target].isfile()):
            raise CommandExecutionError(
                f"unsafe bundle {label}: hard link {name!r} -> {member.linkname!r} does not point to "
                "a regular file earlier in the archive"
            )
        return
    kind = ("a device file" if member.ischr() or member.isblk() else
            "a fifo" if member.isfifo() else f"of unsupported tar type {member.type!r}")
    raise CommandExecutionError(f"unsafe bundle {label}: member {name!r} is {kind}")


def _check_member_size(member, name, total, limits, label):
    if member.size > limits["max_member_bytes"]:
        raise CommandExecutionError(
            f"unsafe bundle {label}: member {name!r} is {member.size} bytes, over the "
            f"{limits['max_member_bytes']}-byte limit per member"
        )
    if total + member.size > limits["max_total_bytes"]:
        raise CommandExecutionError(
            f"unsafe bundle {label}: members add up to more than the {limits['max_total_bytes']}-byte limit "
            f"(at {name!r})"
        )
    return total + member.size


def _extract_member(tar, member, name, dest, label):
    try:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: a second, well-kept guard
            tar.extract(member, dest, filter="data")
        else:
            tar.extract(member, dest)
    except tarfile.FilterError as exc:
        raise CommandExecutionError(f"unsafe bundle {label}: member {name!r} refused: {exc}") from exc


def unpack_bundle(archive, dest, label=None, limits=None):
    """
    Unpack ``archive`` into the new directory ``dest``, refusing (CommandExecutionError naming
    the member) absolute paths, ``..``, links leading outside, device files and fifos, duplicate
    names, and members or totals over the size limits. The caller removes ``dest`` on failure.
    """
    label = label or archive
    limits = {**BUNDLE_LIMITS, **(limits or {})}
    os.makedirs(dest)
    seen, total = {}, 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                if len(seen) >= limits["max_members"]:
                    raise CommandExecutionError(
                        f"unsafe bundle {label}: more than {limits['max_members']} members"
                    )
                name = _member_name(member, label)
                if name == INSTALL_RECORD:
                    raise CommandExecutionError(f"unsafe bundle {label}: member {name!r} is a name the installer uses")
                if name in seen:
                    raise CommandExecutionError(f"unsafe bundle {label}: member {name!r} appears twice")
                _check_member_type(member, name, seen, label)
                if member.isfile():
                    total = _check_member_size(member, name, total, limits, label)
                seen[name] = member
                _extract_member(tar, member, name, dest, label)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CommandExecutionError(f"bundle {label} is not a readable tar.gz archive: {exc}") from exc
    for top, dirs, _files in os.walk(dest):
        for name in dirs:  # readable by the envoy user whatever the minion's umask
            if not os.path.islink(os.path.join(top, name)):
                os.chmod(os.path.join(top, name), 0o755)
    os.chmod(dest, 0o755)
    return sorted(seen)


def bundle_content_hash(members):
    """The bundle's identity: keep in step with ``envoy_bundle.builder.content_hash``."""
    digest = hashlib.sha256(f"envoy-bundle format {BUNDLE_FORMAT}\n".encode())
    for path in sorted(members):
        meta = members[path]
        digest.update(f"{path}\t{meta['mode']}\t{meta['size']}\t{meta['sha256']}\n".encode())
    return digest.hexdigest()


def _load_manifest(release_dir, label):
    path = os.path.join(release_dir, BUNDLE_MANIFEST)
    if os.path.islink(path) or not os.path.isfile(path):
        raise CommandExecutionError(f"bundle {label} has no {BUNDLE_MANIFEST}")
    try:
        manifest = _read_json_file(path)
    except ValueError as exc:
        raise CommandExecutionError(f"bundle {label}: {BUNDLE_MANIFEST} is not valid JSON: {exc}") from exc
    problems = []
    if not isinstance(manifest, dict):
        raise CommandExecutionError(f"bundle {label}: {BUNDLE_MANIFEST} is not a JSON object")
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"format {manifest.get('format')!r} (this module reads {BUNDLE_FORMAT})")
    if not _BUNDLE_ID_RE.fullmatch(str(manifest.get("bundle_id", ""))):
        problems.append(f"bundle_id {manifest.get('bundle_id')!r}")
    if not isinstance(manifest.get("members"), dict):
        problems.append("members (must be an object)")
    if problems:
        raise CommandExecutionError(f"bundle {label}: {BUNDLE_MANIFEST} has a bad " + ", ".join(problems))
    return manifest


def _files_on_disk(release_dir):
    found = set()
    for top, dirs, files in os.walk(release_dir):
        rel_top = os.path.relpath(top, release_dir)
        for entry in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            found.add(posixpath.normpath(posixpath.join(rel_top.replace(os.sep, "/"), entry)))
    return found - {BUNDLE_MANIFEST, INSTALL_RECORD}


def verify_release(release_dir, label=None):
    """
    Check every member of an unpacked bundle against its bundle.json (none missing or extra;
    type, size, mode, sha256) and the bundle id against the members; returns bundle.json.
    """
    label = label or release_dir
    manifest = _load_manifest(release_dir, label)
    members = manifest["members"]
    found = _files_on_disk(release_dir)
    missing, extra = sorted(set(members) - found), sorted(found - set(members))
    if missing:
        raise CommandExecutionError(f"bundle {label}: {missing} listed in {BUNDLE_MANIFEST} but missing")
    if extra:
        raise CommandExecutionError(f"bundle {label}: {extra} present but not listed in {BUNDLE_MANIFEST}")
    for path in sorted(members):
        _verify_member(release_dir, path, members[path], label)
    content = bundle_content_hash(members)
    if content != manifest.get("content_sha256") or not manifest["bundle_id"].endswith("-" + content[:12]):
        raise CommandExecutionError(
            f"bundle {label}: bundle id {manifest['bundle_id']} does not match its members (content {content[:12]})"
        )
    return manifest


def _verify_member(release_dir, path, meta, label):
    full = os.path.join(release_dir, path)
    if os.path.islink(full) or not os.path.isfile(full):
        raise CommandExecutionError(f"bundle {label}: member {path!r} is not a regular file")
    stat = os.stat(full)
    if f"{stat.st_mode & 0o7777:04o}" != str(meta.get("mode")):
        raise CommandExecutionError(
            f"bundle {label}: member {path!r} has mode {stat.st_mode & 0o7777:04o}, bundle.json says {meta.get('mode')}"
        )
    actual = _sha256_of(full) if stat.st_size == meta.get("size") else None
    if actual != meta.get("sha256"):
        raise CommandExecutionError(
            f"bundle {label}: member {path!r} does not match {BUNDLE_MANIFEST} (size {stat.st_size}, "
            f"sha256 {actual or 'not computed'}; expected size {meta.get('size')}, sha256 {meta.get('sha256')}): "
            "tampered or corrupt"
        )


def _check_envoy_runs(release_dir, manifest, label):
    binary = os.path.join(release_dir, "bin", "envoy")
    if "bin/envoy" not in manifest["members"] or not os.path.isfile(binary):
        raise CommandExecutionError(f"bundle {label} has no bin/envoy")
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, errors="replace",
                              timeout=60, check=False)
    except OSError as exc:
        raise CommandExecutionError(
            f"bundle {label}: bin/envoy cannot run on this host ({exc.strerror}): wrong architecture?"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandExecutionError(f"bundle {label}: bin/envoy --version did not answer in 60 s") from exc
    if proc.returncode != 0:
        raise CommandExecutionError(
            f"bundle {label}: bin/envoy --version exited {proc.returncode}: {proc.stderr.strip()[:300]}"
        )
    if f"/{manifest.get('envoy_version')}/" not in proc.stdout:
        raise CommandExecutionError(
            f"bundle {label}: bin/envoy --version says {proc.stdout.strip()[:200]!r}, "
            f"bundle.json says envoy {manifest.get('envoy_version')}"
        )


def _flip_current(host, bundle_id):
    """Point ``current`` at releases/<bundle_id> atomically: a temp symlink renamed over it."""
    link = host["current_dir"]
    if os.path.lexists(link) and not os.path.islink(link):
        raise CommandExecutionError(f"{link} exists and is not a symlink; not replacing it")
    tmp = os.path.join(host["install_dir"], f".current-{os.getpid()}-{time.monotonic_ns()}")
    os.symlink(os.path.join(RELEASES, bundle_id), tmp)
    try:
        os.replace(tmp, link)
    except OSError as exc:
        os.unlink(tmp)
        raise CommandExecutionError(f"cannot point {link} at release {bundle_id}: {exc}") from exc
    _fsync_dir(host["install_dir"])


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree_quietly(path):
    shutil.rmtree(path, ignore_errors=True)


def _clean_stale_work_dirs(install_dir):
    """Temp dirs a killed run left behind (a live run's dir is younger than an hour)."""
    cutoff = time.time() - STALE_TMP_SECONDS
    for name in os.listdir(install_dir):
        path = os.path.join(install_dir, name)
        if name.startswith(BUNDLE_TMP_PREFIX) and os.path.getmtime(path) < cutoff:
            _remove_tree_quietly(path)


def _prune_releases(host, keep, protected):
    """Remove all but the ``keep`` most recently activated releases; never one in ``protected``."""
    releases = bundles(**host)
    pruned = []
    for info in releases[keep:]:
        if info["bundle_id"] in protected or info["current"]:
            continue
        # renamed first so a half-deleted release never looks installed
        doomed = os.path.join(host["install_dir"], f"{BUNDLE_TMP_PREFIX}prune-{info['bundle_id']}")
        os.rename(info["path"], doomed)
        _remove_tree_quietly(doomed)
        pruned.append(info["bundle_id"])
    return pruned


def _make_release_dirs(install_dir):
    """install_dir/releases, traversable by the envoy user whatever the minion's umask."""
    for path in (install_dir, os.path.join(install_dir, RELEASES)):
        if not os.path.isdir(path):
            os.makedirs(path)
            os.chmod(path, 0o755)


def _keep_count(keep, host):
    value = host["keep_releases"] if keep in (None, "") else keep
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise CommandExecutionError(f"keep must be a whole number >= 1, not {keep!r}")
    return value


def _stamp_release(release_dir, digest, label, activated):
    record_path = os.path.join(release_dir, INSTALL_RECORD)
    try:
        record = _read_json_file(record_path)
    except (OSError, ValueError):
        record = {"installed_at": _now_iso()}
    record.update({"archive_sha256": digest, "source": label})
    if activated:
        record["activated_at"] = _now_iso()
    _write_json_atomic(record_path, record)


def _install_downloaded(source, digest, host, label, limits):
    """Fetch, verify and unpack into releases/<id>; returns the bundle id. ``current`` untouched."""
    work = tempfile.mkdtemp(prefix=BUNDLE_TMP_PREFIX, dir=host["install_dir"])
    cached = None
    try:
        archive = _fetch_bundle(source, work, label, limits)
        cached = archive if str(source).startswith("salt://") else None
        _check_archive_sha256(archive, digest, label)
        staging = os.path.join(work, "release")
        unpack_bundle(archive, staging, label, limits)
        manifest = verify_release(staging, label)
        _check_envoy_runs(staging, manifest, label)
        bundle_id = manifest["bundle_id"]
        target = os.path.join(host["install_dir"], RELEASES, bundle_id)
        if os.path.lexists(target):
            if bundle_id == _current_release_id(host):
                # identical content (the id hashes every member): keep the files, remember this archive
                _stamp_release(target, digest, label, activated=False)
                return bundle_id
            os.rename(target, os.path.join(work, "replaced"))
        _stamp_release(staging, digest, label, activated=False)
        os.rename(staging, target)
        return bundle_id
    finally:
        _remove_tree_quietly(work)
        if cached and cached.startswith(os.path.join(__opts__["cachedir"], "")):
            with contextlib.suppress(OSError):
                os.unlink(cached)  # the release holds the content now; don't keep a second copy


def _reuse_release(info, label):
    """Re-verify an installed release before pointing ``current`` back at it (a rollback)."""
    try:
        manifest = verify_release(info["path"], label)
        _check_envoy_runs(info["path"], manifest, label)
        return True
    except CommandExecutionError as exc:
        log.warning("installed release %s failed verification, downloading again: %s", info["path"], exc)
        return False


def install_bundle(source, sha256=None, keep=None, limits=None, **kwargs):
    """
    Install the bundle at ``source`` (salt://, https://, http:// or file://) whose archive has
    ``sha256`` (required), make it ``current`` and keep the ``keep`` newest releases (default:
    settings ``keep_releases``; the current and the previous one are never removed).
    Does nothing, and downloads nothing, when that archive is already current.

    Returns ``{changed, downloaded, old, new, pruned, comment}`` (old/new: bundle id and envoy
    version). Raises CommandExecutionError with the reason on any failure; ``current`` then
    stays as it was and no temp file is left behind.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.install_bundle salt://bundles/envoy-bundle-1.40.0-abc.tar.gz sha256=<hex>
    """
    host = settings(**kwargs)
    label = _redact(source)
    plan = bundle_plan(source, sha256, **host)
    old = plan["old"]
    keep = _keep_count(keep, host)
    result = {"changed": False, "downloaded": False, "old": old, "new": old, "pruned": []}
    if plan["action"] == "none":
        result["comment"] = f"bundle {old['bundle_id']} (sha256 {plan['sha256'][:12]}...) is already current"
        return result
    _make_release_dirs(host["install_dir"])
    _clean_stale_work_dirs(host["install_dir"])
    new_id = None
    if plan["action"] == "switch":
        info = _release_info(host, plan["release"]["bundle_id"], None)
        new_id = info["bundle_id"] if _reuse_release(info, label) else None
    if new_id is None:
        new_id = _install_downloaded(source, plan["sha256"], host, label, {**BUNDLE_LIMITS, **(limits or {})})
        result["downloaded"] = True
    release_dir = os.path.join(host["install_dir"], RELEASES, new_id)
    _stamp_release(release_dir, plan["sha256"], label, activated=True)
    if old is None or old["bundle_id"] != new_id:
        _flip_current(host, new_id)
        result["changed"] = True
    new = _brief(_release_info(host, new_id, new_id))
    result["new"] = new
    result["pruned"] = _prune_releases(host, keep, {new_id, old["bundle_id"] if old else None})
    result["changed"] = result["changed"] or bool(result["pruned"])
    if old and old["bundle_id"] == new_id:
        result["comment"] = f"bundle {new_id} from {label} has the content of the current bundle; nothing to switch"
    else:
        result["comment"] = (f"installed bundle {new_id} (envoy {new['envoy_version']}) from {label}"
                             + (f", was {old['bundle_id']}" if old else ""))
    return result


# --- config: render and validate (issue: manifest, pillar and config generator) ---------------
# The generator and the validating envoy always come from the *current* bundle, run as their own
# processes (the bundle's code is never imported into the minion). Private keys are inlined in the
# config, so any text that may reach state output, comments or logs goes through _cfg_redact.

CFG_ADMIN_ADDRESS = "127.0.0.1"
CFG_CONFIGGEN_TIMEOUT = 300
CFG_VALIDATE_TIMEOUT = 300
CFG_EXIT_BAD_INPUT = 2
_CFG_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)
_CFG_ENVOY_LOG = re.compile(r"^\[[^\]]*\]\[\d+\]\[(?:critical|error)\]\[[^\]]*\] (?:\[[^\]]*\] )?(.*)$")


def _cfg_redact(text):
    """Every PEM private key (raw or JSON-escaped) replaced by a marker with a short digest, so a
    diff still shows that a key changed without showing the key."""
    def marker(match):
        digest = hashlib.sha256(match.group(0).encode()).hexdigest()[:12]
        return f"<redacted private key sha256:{digest}>"

    return _CFG_PRIVATE_KEY.sub(marker, text or "")


def redact(text):
    """
    ``text`` with every PEM private key replaced by ``<redacted private key sha256:...>``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.redact "$(cat envoy.yaml)"
    """
    return _cfg_redact(text)


def _cfg_host_facts(host):
    """What the generator needs to know about this host (docs/manifest.md, "Host facts")."""
    return {
        "node_id": str(__grains__.get("id") or __opts__.get("id") or "envoy"),
        "admin_address": CFG_ADMIN_ADDRESS,
        "admin_port": int(host["admin_port"]),
        "log_dir": host["log_dir"],
    }


def _cfg_pillar():
    pillar = __pillar__.get("envoy", {}) if hasattr(__pillar__, "get") else {}
    return pillar if isinstance(pillar, dict) else {}


def _cfg_bundle_file(host, *parts):
    path = os.path.join(host["current_dir"], *parts)
    if not os.path.exists(path):
        raise CommandExecutionError(
            f"no Envoy bundle is installed: {path} does not exist (apply envoy.bundle first)")
    return path


def _cfg_run_generator(host):
    launcher = _cfg_bundle_file(host, "bin", "envoy-configgen")
    facts = json.dumps({"pillar": _cfg_pillar(), "host": _cfg_host_facts(host)}, default=str, sort_keys=True)
    try:
        proc = subprocess.run(
            [sys.executable, launcher, "--manifest-dir", host["manifest_dir"], "--facts", "-"],
            input=facts, capture_output=True, text=True, timeout=CFG_CONFIGGEN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandExecutionError(f"envoy-configgen took more than {CFG_CONFIGGEN_TIMEOUT}s") from exc
    if proc.returncode == CFG_EXIT_BAD_INPUT:
        raise CommandExecutionError("bad manifest or pillar:\n" + _cfg_redact(proc.stderr).strip())
    if proc.returncode != 0:
        tail = "\n".join(_cfg_redact(proc.stderr).strip().splitlines()[-20:])
        raise CommandExecutionError(f"envoy-configgen failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _cfg_manifest_files(manifest_dir):
    """(name, bytes) of every file in the manifest dir: a superset of what the generator reads."""
    try:
        names = sorted(os.listdir(manifest_dir))
    except FileNotFoundError:
        return []
    files = []
    for name in names:
        path = os.path.join(manifest_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                files.append((name, handle.read()))
    return files


def render_inputs_digest(**kwargs):
    """
    sha256 of everything the config generator reads: the current bundle (its release id), the
    files in ``manifest_dir``, pillar ``envoy`` and the host facts. The generator is deterministic
    (same inputs, same bytes), so an unchanged digest means an unchanged rendered config:
    ``envoy.config_managed`` then skips rendering.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.render_inputs_digest
    """
    host = settings(**kwargs)
    digest = hashlib.sha256()
    digest.update(os.path.realpath(host["current_dir"]).encode() + b"\0")
    for name, data in _cfg_manifest_files(host["manifest_dir"]):
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    facts = {"pillar": _cfg_pillar(), "host": _cfg_host_facts(host)}
    digest.update(json.dumps(facts, default=str, sort_keys=True).encode())
    return digest.hexdigest()


def render(redact=True, **kwargs):
    """
    This host's Envoy config, rendered by the current bundle's generator from the manifests in
    ``manifest_dir``, pillar ``envoy`` and the host facts. Private keys are redacted unless
    ``redact=False``. Bad input raises an error naming the file and field.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.render
        salt-call envoy.render redact=False --out txt
    """
    host = settings(**kwargs)
    text = _cfg_run_generator(host)
    return _cfg_redact(text) if redact else text


def _cfg_run_as(host):
    """(uid, gid) to validate as: the envoy user when we are root and it exists, else None."""
    if os.geteuid() != 0 or host["user"] == "root":
        return None
    import pwd

    try:
        entry = pwd.getpwnam(host["user"])
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _cfg_envoy_error(output):
    """Envoy's own error lines without the log prefixes (the whole tail when there are none)."""
    lines = [m.group(1) for m in map(_CFG_ENVOY_LOG.match, output.splitlines()) if m]
    text = "\n".join(lines) if lines else "\n".join(output.strip().splitlines()[-20:])
    return _cfg_redact(" ".join(text.split(" ")).strip())


def _cfg_validate_file(host, source_path):
    """Copy the config into a private dir as ``envoy.yaml`` (Envoy picks the format by extension;
    the envoy user must be able to read it) and run ``envoy --mode validate`` on it."""
    binary = _cfg_bundle_file(host, "bin", "envoy")
    run_as = _cfg_run_as(host)
    workdir = tempfile.mkdtemp(prefix="envoy-validate-")
    try:
        path = os.path.join(workdir, "envoy.yaml")
        shutil.copyfile(source_path, path)
        os.chmod(path, 0o600)
        if run_as:
            os.chown(workdir, *run_as)
            os.chown(path, *run_as)
        extra = {"user": run_as[0], "group": run_as[1], "extra_groups": []} if run_as else {}
        proc = subprocess.run([binary, "--mode", "validate", "--log-level", "error", "-c", path],
                              capture_output=True, text=True, timeout=CFG_VALIDATE_TIMEOUT, check=False,
                              cwd=workdir, **extra)
    except subprocess.TimeoutExpired as exc:
        raise CommandExecutionError(f"envoy --mode validate took more than {CFG_VALIDATE_TIMEOUT}s") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode == 0:
        return {"ok": True, "error": ""}
    error = _cfg_envoy_error(proc.stderr + "\n" + proc.stdout)
    return {"ok": False, "error": error.replace(path, source_path)}


def validate(path=None, **kwargs):
    """
    Check a config with the current bundle's ``envoy --mode validate`` (as the envoy user when
    run as root). Without ``path``: this host's freshly rendered config. Returns ``ok`` and Envoy's
    own error text (private keys redacted).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.validate
        salt-call envoy.validate path=/etc/envoy/envoy.yaml
    """
    host = settings(**kwargs)
    if path is not None:
        if not os.path.isfile(path):
            raise CommandExecutionError(f"{path}: no such file")
        return _cfg_validate_file(host, path)
    text = _cfg_run_generator(host)
    workdir = tempfile.mkdtemp(prefix="envoy-render-")
    try:
        rendered = os.path.join(workdir, "envoy.yaml")
        with open(os.open(rendered, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as fh:
            fh.write(text)
        return _cfg_validate_file(host, rendered)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)



# --- operations: supervisor, hot restart, admin API (issue: hot restart done right) -----------
#
# The restarter (bundle: envoy_bundle/restarter.py) supervises Envoy's epochs and keeps a JSON
# status file in run_dir; these functions start and stop it (systemd unit or a detached daemon),
# read its status, signal it, and talk to Envoy's admin API on 127.0.0.1 (always with timeouts).

RESTART_DEFAULTS = {
    # Per role: service-to-service connections are short; the edge keeps long-lived clients longer.
    "roles": {
        "sidecar": {"drain_time_s": 60, "parent_shutdown_time_s": 90},
        "front": {"drain_time_s": 300, "parent_shutdown_time_s": 450},
    },
    "live_timeout_s": 60,  # a new epoch not LIVE by then is a failed restart
    "stop_timeout_s": 30,  # SIGTERM, then SIGKILL
    "full_restart_drain_s": None,  # health check failing before a full restart; None: drain_time_s
    "concurrency": None,  # Envoy's worker threads; None: Envoy's default (one per core)
    "envoy_args": [],
}
RESTART_KEYS = ("drain_time_s", "parent_shutdown_time_s", "live_timeout_s", "stop_timeout_s",
                "full_restart_drain_s", "concurrency", "envoy_args")
OP_STATUS_FILE = "status.json"
OP_PID_FILE = "restarter.pid"
OP_LOCK_FILE = "restart.lock"
OP_ADMIN_TIMEOUT = 3.0
SYSTEMD_UNIT = "envoy.service"
SYSTEMD_UNIT_DIR = "/etc/systemd/system"
_OP_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via a proxy


def restart_settings(**kwargs):
    """
    Hot restart timings for this host: the longest of its roles' defaults (pillar ``envoy:roles``),
    then pillar ``envoy:restart:roles:<role>``, then the flat keys of ``envoy:restart``, then kwargs.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.restart_settings
    """
    pillar = __salt__["config.get"]("envoy:restart", {}) or {}
    roles = __salt__["config.get"]("envoy:roles", ["sidecar"]) or ["sidecar"]
    merged = {k: v for k, v in RESTART_DEFAULTS.items() if k != "roles"}
    merged["drain_time_s"] = merged["parent_shutdown_time_s"] = 0
    role_tables = {**RESTART_DEFAULTS["roles"]}
    for role, values in (pillar.get("roles") or {}).items():
        role_tables[role] = {**role_tables.get(role, {}), **(values or {})}
    for role in roles:
        for key, value in role_tables.get(role, RESTART_DEFAULTS["roles"]["sidecar"]).items():
            merged[key] = max(merged.get(key) or 0, value)
    for source in (pillar, kwargs):
        merged.update({k: v for k, v in source.items() if k in RESTART_KEYS and v is not None})
    for key in ("drain_time_s", "parent_shutdown_time_s", "live_timeout_s", "stop_timeout_s"):
        if not isinstance(merged[key], (int, float)) or merged[key] <= 0:
            raise CommandExecutionError(f"pillar envoy:restart:{key}={merged[key]!r}: expected a positive number")
    if merged["drain_time_s"] >= merged["parent_shutdown_time_s"]:
        raise CommandExecutionError(
            f"pillar envoy:restart: drain_time_s={merged['drain_time_s']} must be below "
            f"parent_shutdown_time_s={merged['parent_shutdown_time_s']}")
    if merged["full_restart_drain_s"] is None:
        merged["full_restart_drain_s"] = merged["drain_time_s"]
    return merged


def supervisor(**kwargs):
    """
    ``systemd`` or ``daemon``: ``auto`` is systemd when the init grain says systemd, the host is not
    a sandbox (no ``root``), we are root and /etc/systemd/system is writable.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.supervisor
    """
    host = settings(**kwargs)
    kind = host["supervisor"]
    if kind in ("systemd", "daemon"):
        return kind
    if kind != "auto":
        raise CommandExecutionError(f"envoy:lookup:supervisor={kind!r}: expected systemd, daemon or auto")
    if (__grains__.get("init") == "systemd" and not host["root"] and os.geteuid() == 0
            and os.access(SYSTEMD_UNIT_DIR, os.W_OK)):
        return "systemd"
    return "daemon"


def restarter_command(**kwargs):
    """
    The restarter's command line for this host (the systemd unit's ExecStart uses it too).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.restarter_command
    """
    host = settings(**kwargs)
    timing = restart_settings(**kwargs)
    command = [
        sys.executable, os.path.join(host["current_dir"], "bin", "envoy-restarter"),
        "--install-dir", host["install_dir"], "--config", host["config_file"],
        "--base-id", str(host["base_id"]), "--admin-port", str(host["admin_port"]),
        "--run-dir", host["run_dir"], "--log-dir", host["log_dir"],
        "--drain-time-s", str(int(timing["drain_time_s"])),
        "--parent-shutdown-time-s", str(int(timing["parent_shutdown_time_s"])),
        "--live-timeout-s", str(timing["live_timeout_s"]),
        "--stop-timeout-s", str(timing["stop_timeout_s"]),
    ]
    if timing["concurrency"]:
        command.append(f"--envoy-arg=--concurrency={int(timing['concurrency'])}")
    command += [f"--envoy-arg={arg}" for arg in timing["envoy_args"]]
    return command


# -- the restarter's files and process --


def _op_read_status(host):
    try:
        with open(os.path.join(host["run_dir"], OP_STATUS_FILE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _op_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def _op_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _op_restarter_pid(host):
    """The running restarter's pid for this host, or None (a stale pid file is ignored)."""
    try:
        with open(os.path.join(host["run_dir"], OP_PID_FILE)) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    cmdline = _op_cmdline(pid)
    if _op_alive(pid) and any("envoy-restarter" in part or "restarter" in part for part in cmdline) \
            and host["run_dir"] in cmdline:
        return pid
    return None


def _op_is_our_envoy(pid, host):
    """An envoy process started for this host's config and base id (never matched by name alone)."""
    cmdline = _op_cmdline(pid)
    if "--restart-epoch" not in cmdline or "-c" not in cmdline:
        return False
    try:
        config = cmdline[cmdline.index("-c") + 1]
        base_id = cmdline[cmdline.index("--base-id") + 1]
    except (ValueError, IndexError):
        return False
    return config == host["config_file"] and base_id == str(host["base_id"])


def _op_orphans(host):
    """Envoy epochs of this host that no restarter supervises (it was killed): from the status
    file and a scan of /proc for this host's exact config path and base id."""
    pids = {e.get("pid") for e in _op_read_status(host).get("epochs", [])}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pids.add(int(entry))
    return sorted(p for p in pids if p and p != os.getpid() and _op_alive(p) and _op_is_our_envoy(p, host))


def orphans(**kwargs):
    """
    Envoy epochs of this host that no restarter supervises (pids); ``envoy.start`` stops them.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.orphans
    """
    host = settings(**kwargs)
    return [] if _op_restarter_pid(host) else _op_orphans(host)


def _op_terminate(pids, timeout):
    """SIGCONT+SIGTERM, then SIGKILL after ``timeout``; returns the pids that needed the KILL."""
    for pid in pids:
        for signum in (signal.SIGCONT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while any(_op_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = [p for p in pids if _op_alive(p)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed


def _op_wait(predicate, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@contextlib.contextmanager
def _op_restart_lock(host, timeout):
    """One restart at a time per host (fcntl lock in run_dir); yields True if we had to wait."""
    os.makedirs(host["run_dir"], exist_ok=True)
    path = os.path.join(host["run_dir"], OP_LOCK_FILE)
    with open(path, "a+") as handle:
        waited = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = True
                if time.monotonic() >= deadline:
                    raise CommandExecutionError(
                        f"another run holds the restart lock {path} for more than {timeout:g}s") from None
                time.sleep(0.1)
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _op_lock_timeout(timing):
    return timing["live_timeout_s"] + timing["parent_shutdown_time_s"] + timing["full_restart_drain_s"] \
        + 2 * timing["stop_timeout_s"] + 30


# -- the admin API --


def _op_admin(host, path, method="GET", timeout=OP_ADMIN_TIMEOUT):
    """(status, body) from the admin API on 127.0.0.1; CommandExecutionError if unreachable."""
    url = f"http://127.0.0.1:{host['admin_port']}{path}"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with _OP_OPENER.open(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as exc:
        raise CommandExecutionError(f"envoy admin {method} {url} failed: {exc}") from exc


def _op_admin_post(host, path):
    status, body = _op_admin(host, path, method="POST")
    if status != 200:
        raise CommandExecutionError(f"envoy admin POST {path} answered HTTP {status}: {body.strip()[:200]}")
    return True


def _op_server_info(host):
    try:
        status, body = _op_admin(host, "/server_info", timeout=1.5)
        return json.loads(body) if status == 200 else {}
    except (CommandExecutionError, ValueError):
        return {}


def _op_seconds(text):
    try:
        return int(str(text).rstrip("s"))
    except ValueError:
        return None


def _op_binary_hot_restart_version(host):
    binary = os.path.join(host["current_dir"], "bin", "envoy")
    try:
        proc = subprocess.run([binary, "--hot-restart-version"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandExecutionError(f"{binary} --hot-restart-version failed: {exc}") from exc
    version = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or not version:
        raise CommandExecutionError(f"{binary} --hot-restart-version failed: {version or proc.returncode}")
    return version


def _op_running_hot_restart_version(host, status):
    try:
        code, body = _op_admin(host, "/hot_restart_version", timeout=1.5)
        if code == 200 and body.strip():
            return body.strip(), "admin /hot_restart_version"
    except CommandExecutionError:
        pass
    # The admin listener is gone after a failed hot restart; the restarter recorded the version.
    return status.get("hot_restart_version"), "the restarter's status file"


def _op_current_bundle_id(host):
    return os.path.basename(os.path.realpath(host["current_dir"]))


def _op_file_sha256(path):
    """sha256 of a file, None when it cannot be read (no config yet)."""
    try:
        return _sha256_of(path)
    except OSError:
        return None


# -- public operations --


def status(**kwargs):
    """
    What runs: supervisor, restarter pid, epochs, LIVE or not, envoy and bundle versions, config hash
    (on disk and running), uptime and the last restart.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.status
    """
    host = settings(**kwargs)
    recorded = _op_read_status(host)
    pid = _op_restarter_pid(host)
    info = _op_server_info(host) if pid else {}
    last = dict(recorded.get("last_restart") or {})
    last.pop("log_tail", None)
    return {
        "supervisor": supervisor(**kwargs),
        "running": pid is not None,
        "restarter_pid": pid,
        "live": info.get("state") == "LIVE",
        "state": info.get("state") or ("admin unreachable" if pid else "stopped"),
        "epoch": recorded.get("live_epoch") if pid else None,
        "live_pid": recorded.get("live_pid") if pid else None,
        "epochs": recorded.get("epochs", []) if pid else [],
        "envoy_version": info.get("version"),
        "hot_restart_version": recorded.get("hot_restart_version"),
        "bundle": {"current": _op_current_bundle_id(host), "running": recorded.get("bundle_id") if pid else None},
        "config_sha256": {"file": _op_file_sha256(host["config_file"]),
                          "running": recorded.get("config_sha256") if pid else None},
        "uptime_s": {"current_epoch": _op_seconds(info.get("uptime_current_epoch", "")),
                     "all_epochs": _op_seconds(info.get("uptime_all_epochs", ""))},
        "restart_seq": recorded.get("restart_seq"),
        "last_restart": last or None,
        "hot_restart_blocked": recorded.get("hot_restart_blocked"),
        "crashes": recorded.get("crashes"),
    }


def _op_spawn_daemon(host, command):
    """Start the restarter detached: double fork, new session, stdio to its log, cwd /."""
    log_path = os.path.join(host["log_dir"], "restarter.log")
    drop = os.geteuid() == 0 and host["user"] not in ("root", "")
    if drop:
        import grp
        import pwd

        uid, gid = pwd.getpwnam(host["user"]).pw_uid, grp.getgrnam(host["group"]).gr_gid
        for path in (host["run_dir"], host["log_dir"]):
            os.chown(path, uid, gid)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the forked child)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            os.dup2(null_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.closerange(3, 65536)
            if drop:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            os.execv(command[0], command)
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the state must be able to say it
            as_user = f" as user {host['user']}" if drop else ""
            os.write(2, f"cannot start the restarter{as_user}: {command[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    os.close(log_fd)
    os.close(null_fd)
    os.waitpid(child, 0)
    return log_path


def _op_tail(path, limit=2000):
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _op_wait_first_epoch(host, timing, restarter_pid, after_seq=0):
    """After a start: LIVE (True, None), or the failure the restarter recorded (False, error).
    Only failures of attempts after ``after_seq`` count; a backed-off retry is waited for."""
    def settled():
        if not _op_alive(restarter_pid):
            return "exited"
        recorded = _op_read_status(host)
        if recorded.get("restarter_pid") != restarter_pid:
            return None
        if recorded.get("live_epoch") is not None:
            return "live"
        last = recorded.get("last_restart") or {}
        return "failed" if last.get("outcome") == "failed" and last.get("seq", 0) > after_seq else None

    retry_in = _op_read_status(host).get("next_start_in_s") or 0
    outcome = _op_wait(settled, timing["live_timeout_s"] + 10 + retry_in)
    if outcome == "live":
        return True, None
    if outcome == "failed":
        return False, (_op_read_status(host).get("last_restart") or {}).get("error")
    if outcome == "exited":
        return False, "the restarter exited: " + _op_tail(os.path.join(host["log_dir"], "restarter.log")).strip()
    return False, f"envoy not LIVE after {timing['live_timeout_s'] + 10:g}s"


def start(wait=True, **kwargs):
    """
    Start the supervisor (systemd unit or detached restarter) unless it runs; envoy epochs left
    behind by a killed restarter are stopped first. With ``wait``, returns once epoch 0 is LIVE
    or has failed. ``started`` says whether this call started it.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.start
    """
    host = settings(**kwargs)
    timing = restart_settings(**kwargs)
    with _op_restart_lock(host, _op_lock_timeout(timing)):
        return _op_start_locked(host, timing, kwargs, wait=wait)


OP_SHM_DIR = "/dev/shm"


def _op_check_shared_memory(host):
    """Epoch 0 removes its base id's hot restart memory left by an earlier Envoy, but it cannot
    remove one that another user's Envoy left (/dev/shm is sticky): Envoy would abort at every start.
    Say so before starting, with the way out."""
    path = os.path.join(OP_SHM_DIR, f"envoy_shared_memory_{int(host['base_id']) * 10}")
    try:
        owner = os.stat(path).st_uid
    except FileNotFoundError:
        return
    envoy_uid = _op_envoy_uid(host)
    if envoy_uid in (0, owner):  # root, or the owner, may unlink it in the sticky /dev/shm
        return
    import pwd

    try:
        owner_name = pwd.getpwuid(owner).pw_name
    except KeyError:
        owner_name = str(owner)
    raise CommandExecutionError(
        f"{path} belongs to {owner_name}: an Envoy run as {owner_name} with base_id {host['base_id']} left it, "
        f"and Envoy as {host['user'] or 'this user'} cannot replace it. If no such Envoy runs any more, remove "
        f"that file; if one does, give this Envoy another envoy:lookup:base_id")


def _op_envoy_uid(host):
    """The uid Envoy runs as: the envoy user when the daemon drops to it (we are root), else ours."""
    if os.geteuid() == 0 and host["user"] not in ("root", ""):
        import pwd

        try:
            return pwd.getpwnam(host["user"]).pw_uid
        except KeyError:
            return 0
    return os.geteuid()


def _op_start_locked(host, timing, kwargs, wait=True):
    kind = supervisor(**kwargs)
    pid = _op_restarter_pid(host)
    if pid:
        ret = {"result": True, "started": False, "restarter_pid": pid, "supervisor": kind,
               "comment": f"the restarter already runs (pid {pid})", "epoch": _op_read_status(host).get("live_epoch")}
        if wait and ret["epoch"] is None:  # it runs, but is Envoy LIVE? (a crash loop is not)
            last = _op_read_status(host).get("last_restart") or {}
            seq = last.get("seq", 0) - (1 if last.get("outcome") == "pending" else 0)
            ok, error = _op_wait_first_epoch(host, timing, pid, after_seq=seq)
            ret.update(result=ok, error=error, epoch=_op_read_status(host).get("live_epoch"))
            if not ok:
                ret["comment"] += f", but no envoy epoch is LIVE: {error}"
        return ret
    orphans = _op_orphans(host)
    if orphans:
        log.warning("envoy: stopping epochs %s left without a restarter", orphans)
        _op_terminate(orphans, timing["stop_timeout_s"])
    for path in (host["run_dir"], host["log_dir"]):
        os.makedirs(path, exist_ok=True)
    _op_check_shared_memory(host)
    if kind == "systemd":
        result = __salt__["cmd.run_all"](["systemctl", "start", SYSTEMD_UNIT], python_shell=False)
        if result["retcode"] != 0:
            raise CommandExecutionError(f"systemctl start {SYSTEMD_UNIT} failed: {result['stderr']}")
    else:
        _op_spawn_daemon(host, restarter_command(**kwargs))
    pid = _op_wait(lambda: _op_restarter_pid(host), 15)
    if not pid:
        tail = _op_tail(os.path.join(host["log_dir"], "restarter.log")).strip()
        raise CommandExecutionError(f"the envoy restarter did not start: {tail or 'no log'}")
    ret = {"result": True, "started": True, "restarter_pid": pid, "supervisor": kind, "orphans_stopped": orphans}
    if wait:
        ok, error = _op_wait_first_epoch(host, timing, pid)
        ret.update(result=ok, error=error, epoch=_op_read_status(host).get("live_epoch"))
    return ret


def stop(**kwargs):
    """
    Stop the supervisor and every envoy epoch (SIGTERM, SIGKILL after the stop timeout).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.stop
    """
    host = settings(**kwargs)
    timing = restart_settings(**kwargs)
    with _op_restart_lock(host, _op_lock_timeout(timing)):
        return _op_stop_locked(host, timing, kwargs)


def _op_stop_locked(host, timing, kwargs):
    pid = _op_restarter_pid(host)
    if supervisor(**kwargs) == "systemd":
        result = __salt__["cmd.run_all"](["systemctl", "stop", SYSTEMD_UNIT], python_shell=False)
        if result["retcode"] != 0:
            raise CommandExecutionError(f"systemctl stop {SYSTEMD_UNIT} failed: {result['stderr']}")
    elif pid:
        # The restarter ends its epochs itself (TERM, then KILL after its own stop timeout).
        _op_terminate([pid], timing["stop_timeout_s"] + 10)
    orphans = _op_orphans(host)
    if orphans:
        _op_terminate(orphans, timing["stop_timeout_s"])
    return {"result": True, "stopped": pid is not None, "restarter_pid": pid, "orphans_stopped": orphans}


def _op_send_hup(host, timing, pid):
    """SIGHUP the restarter and wait for the attempt that covers it: (outcome, last_restart)."""
    before = _op_read_status(host).get("hups", 0)
    os.kill(pid, signal.SIGHUP)
    counted = _op_wait(lambda: (_op_read_status(host).get("hups") or 0) > before and _op_read_status(host), 10)
    if not counted:
        raise CommandExecutionError(f"the restarter (pid {pid}) did not acknowledge SIGHUP within 10s")
    hup = counted["hups"]

    def finished():
        if not _op_alive(pid):
            return {"outcome": "failed", "error": "the restarter exited during the hot restart"}
        last = _op_read_status(host).get("last_restart") or {}
        if (last.get("hup") or 0) >= hup and last.get("outcome") in ("success", "failed", "refused"):
            return last
        return None

    # A parent still draining defers the HUP for up to its shutdown time.
    timeout = timing["parent_shutdown_time_s"] + timing["live_timeout_s"] + 15
    last = _op_wait(finished, timeout)
    if not last:
        raise CommandExecutionError(f"no outcome for the hot restart after {timeout:g}s")
    return last


def _op_listener_addresses(config):
    """{(address, port): listener name} of a bootstrap's static listeners."""
    found = {}
    for listener in ((config or {}).get("static_resources") or {}).get("listeners") or []:
        sock = (listener.get("address") or {}).get("socket_address") or {}
        if "port_value" in sock:
            found[(sock.get("address", "0.0.0.0"), int(sock["port_value"]))] = listener.get("name", "?")
    return found


def _op_running_listener_addresses(host):
    status, body = _op_admin(host, "/listeners?format=json")
    if status != 200:
        raise CommandExecutionError(f"envoy admin /listeners answered HTTP {status}")
    return {(s["local_address"]["socket_address"]["address"], int(s["local_address"]["socket_address"]["port_value"]))
            for s in json.loads(body).get("listener_statuses", [])
            if "port_value" in (s.get("local_address") or {}).get("socket_address", {})}


def _op_bind_error(address, port):
    """Why ``address:port`` cannot be bound right now (None when it can). Salt runs as root or as
    the user Envoy runs as, so what fails here fails for Envoy too."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _op_preflight_listeners(host):
    """Before a hot restart: every listener the new config adds must be able to bind. A new epoch
    that fails to bind leaves Envoy's shared memory flagged for good (no later hot restart of that
    process succeeds, and the full restart that follows cannot drain), so such a config is refused
    here with Envoy untouched. Listeners the running epoch has are handed over by Envoy itself."""
    import yaml

    try:
        with open(host["config_file"], encoding="utf-8") as handle:
            wanted = _op_listener_addresses(yaml.safe_load(handle))
        running = _op_running_listener_addresses(host)
    except (OSError, ValueError, KeyError, yaml.YAMLError, CommandExecutionError) as exc:
        log.debug("listener pre-flight skipped: %s", exc)  # Envoy's own start will tell
        return None
    problems = []
    for (addr, port), name in sorted(wanted.items()):
        error = None if (addr, port) in running else _op_bind_error(addr, port)
        if error:
            problems.append(f"listener {name!r} cannot bind {addr}:{port}: {error}")
    if problems:
        return ("the new config was not started: " + "; ".join(problems)
                + " (checked before the hot restart; the running epoch keeps serving)")
    return None


def _op_hot_restart_locked(host, timing):
    pid = _op_restarter_pid(host)
    if not pid:
        raise CommandExecutionError("the envoy restarter is not running (envoy.start first)")
    refused = _op_preflight_listeners(host)
    if refused:
        return {"result": False, "kind": "hot", "outcome": "refused", "epoch": _op_read_status(host).get("live_epoch"),
                "error": refused, "exit_code": None, "duration_s": 0.0}
    started = time.monotonic()
    last = _op_send_hup(host, timing, pid)
    ok = last.get("outcome") == "success"
    return {"result": ok, "kind": "hot", "outcome": last.get("outcome"), "epoch": last.get("epoch"),
            "error": None if ok else last.get("error"), "exit_code": last.get("exit_code"),
            "duration_s": round(time.monotonic() - started, 3)}


def hot_restart(**kwargs):
    """
    SIGHUP the restarter and wait until the new epoch is LIVE or its failure is recorded. The old
    epoch keeps serving when the new one fails.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.hot_restart
    """
    host = settings(**kwargs)
    timing = restart_settings(**kwargs)
    with _op_restart_lock(host, _op_lock_timeout(timing)):
        return _op_hot_restart_locked(host, timing)


def _op_full_restart_locked(host, timing, kwargs):
    started = time.monotonic()
    steps = []
    try:
        _op_admin_post(host, "/healthcheck/fail")
        steps.append("healthcheck failed")
        time.sleep(timing["full_restart_drain_s"])
        steps.append(f"drained {timing['full_restart_drain_s']:g}s")
    except CommandExecutionError as exc:
        steps.append(f"no drain ({exc})")
    _op_stop_locked(host, timing, kwargs)
    steps.append("stopped")
    started_ret = _op_start_locked(host, timing, kwargs)
    ok = started_ret["result"]
    if ok:
        with contextlib.suppress(CommandExecutionError):
            _op_admin_post(host, "/healthcheck/ok")
        steps.append("started at epoch 0")
    return {"result": ok, "kind": "full", "outcome": "success" if ok else "failed", "epoch": started_ret.get("epoch"),
            "error": started_ret.get("error"), "steps": steps, "duration_s": round(time.monotonic() - started, 3)}


def full_restart(**kwargs):
    """
    A drained full restart: ``/healthcheck/fail``, wait out the drain window, stop, start at epoch 0,
    ``/healthcheck/ok``. For a binary whose hot restart version differs from the running one.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.full_restart
    """
    host = settings(**kwargs)
    timing = restart_settings(**kwargs)
    with _op_restart_lock(host, _op_lock_timeout(timing)):
        return _op_full_restart_locked(host, timing, kwargs)


def restart_kind(**kwargs):
    """
    Which restart applying the current bundle and config needs: ``start`` (nothing runs), ``hot``
    (same hot restart version) or ``full`` (another version, or hot restart blocked), with the reason.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.restart_kind
    """
    host = settings(**kwargs)
    if not _op_restarter_pid(host):
        return {"kind": "start", "reason": "the envoy restarter is not running"}
    recorded = _op_read_status(host)
    new_version = _op_binary_hot_restart_version(host)
    running_version, source = _op_running_hot_restart_version(host, recorded)
    ret = {"new_hot_restart_version": new_version, "running_hot_restart_version": running_version}
    if recorded.get("hot_restart_blocked"):
        return {**ret, "kind": "full", "reason": recorded["hot_restart_blocked"]}
    if not running_version:
        return {**ret, "kind": "full", "reason": "the running envoy's hot restart version is unknown"}
    if running_version != new_version:
        return {**ret, "kind": "full", "reason": f"hot restart version {new_version} of the current bundle differs "
                                                 f"from {running_version} of the running envoy ({source})"}
    return {**ret, "kind": "hot", "reason": f"same hot restart version {new_version}"}


def _op_process_start_time():
    """When this process (the salt run) started, in epoch seconds (from /proc)."""
    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _op_already_applied(host, since):
    """Another run restarted onto exactly the current bundle and config after ``since``."""
    recorded = _op_read_status(host)
    live = next((e for e in recorded.get("epochs", []) if e.get("epoch") == recorded.get("live_epoch")), None)
    return bool(live and live.get("started_at", 0) >= since
                and live.get("bundle_id") == _op_current_bundle_id(host)
                and live.get("config_sha256") == _op_file_sha256(host["config_file"]))


def rollback_config(**kwargs):
    """
    Put ``envoy.yaml.prev`` back as ``envoy.yaml`` (atomically; the running Envoy is not touched).
    Returns False when there is no previous config.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.rollback_config
    """
    host = settings(**kwargs)
    previous = host["config_file"] + ".prev"
    if not os.path.exists(previous):
        return False
    tmp = f"{host['config_file']}.rollback.{os.getpid()}.yaml"
    shutil.copy2(previous, tmp)
    os.replace(tmp, host["config_file"])
    return True


def reload(since=None, rollback=True, **kwargs):
    """
    Apply the current bundle and config to the running Envoy: start it if nothing runs, else a hot
    restart (same hot restart version) or a drained full restart. One at a time per host (a lock);
    a run that waited and finds another run already restarted onto the same bundle and config after
    ``since`` (default: when this process started) does nothing. If the new epoch fails, the previous
    config is put back (``rollback``) and the result is False with Envoy's error.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.reload
    """
    host = settings(**kwargs)
    timing = restart_settings(**kwargs)
    since = _op_process_start_time() if since is None else since
    with _op_restart_lock(host, _op_lock_timeout(timing)):
        if _op_already_applied(host, since):
            recorded = _op_read_status(host)
            return {"result": True, "kind": "none", "epoch": recorded.get("live_epoch"),
                    "comment": "another run already restarted envoy onto this bundle and config"}
        plan = restart_kind(**kwargs)
        if plan["kind"] == "start":
            out = _op_start_locked(host, timing, kwargs)
            out.update(kind="start", reason=plan["reason"])
        elif plan["kind"] == "hot":
            out = _op_hot_restart_locked(host, timing)
        else:
            out = _op_full_restart_locked(host, timing, kwargs)
        out["reason"] = plan["reason"]
        if not out["result"] and rollback:
            out["rolled_back"] = _op_rollback_and_recover(host, timing, kwargs)
        return out


def _op_rollback_and_recover(host, timing, kwargs):
    """After a failed restart: the previous config goes back; if no Envoy is LIVE any more (a
    failed full restart), wait for the restarter's next cold start, which reads the restored file."""
    rolled = rollback_config(**kwargs)
    if rolled and not _op_server_info(host).get("state") == "LIVE":
        pid = _op_restarter_pid(host)
        if pid:
            _op_wait(lambda: _op_read_status(host).get("live_epoch") is not None,
                     timing["live_timeout_s"] + 35)
        else:
            _op_start_locked(host, timing, kwargs)
    return rolled


def stats(filter=None, prefix=None, **kwargs):
    """
    Envoy counters and gauges as {name: value}, filtered by a regex (``filter``) or a ``prefix``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.stats prefix=listener.
    """
    host = settings(**kwargs)
    regex = filter or (f"^{re.escape(prefix)}" if prefix else None)
    path = "/stats?format=json" + (f"&filter={urllib.parse.quote(regex)}" if regex else "")
    code, body = _op_admin(host, path)
    if code != 200:
        raise CommandExecutionError(f"envoy admin GET /stats answered HTTP {code}: {body.strip()[:200]}")
    return {s["name"]: s["value"] for s in json.loads(body).get("stats", []) if "value" in s}


def drain(graceful=True, inbound_only=False, **kwargs):
    """
    Drain the listeners (``POST /drain_listeners``): Envoy stops accepting and closes connections.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.drain
    """
    host = settings(**kwargs)
    query = "&".join(q for q, on in (("graceful", graceful), ("inboundonly", inbound_only)) if on)
    return _op_admin_post(host, "/drain_listeners" + (f"?{query}" if query else ""))


def healthcheck_fail(**kwargs):
    """
    Make the health_check filter answer 503 so load balancers and discovery drain this host.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.healthcheck_fail
    """
    return _op_admin_post(settings(**kwargs), "/healthcheck/fail")


def healthcheck_ok(**kwargs):
    """
    Undo ``healthcheck_fail``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.healthcheck_ok
    """
    return _op_admin_post(settings(**kwargs), "/healthcheck/ok")


def reopen_logs(**kwargs):
    """
    Reopen Envoy's access logs (after rotation).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.reopen_logs
    """
    return _op_admin_post(settings(**kwargs), "/reopen_logs")



# --- discovery registration (issue: service discovery) ----------------------------------------
# Pillar ``envoy:discovery``: ``address`` (host:port, where Envoy and hosts reach the service; the
# config generator reads it too), ``url`` (registration base URL, default http://<address>),
# ``register`` (ip, tags, revision, timeout, schedule) and ``server`` (hosts that run the service).

DISC_DEFAULTS = {
    "url": None,
    "address": None,
    "register": {"enabled": True, "ip": None, "tags": {}, "revision": None, "timeout": 5,
                 "minutes": 1, "splay": 20},
    "server": {"hosts": [], "listen": "0.0.0.0:8080", "ttl": 600, "redis": None,
               "sqlite": "/var/lib/envoy-discovery/hosts.sqlite3", "command": "envoy-discovery",
               "env": "production"},
}
DISC_PROCESS_MARK = "envoy-discovery"


def discovery_settings(**kwargs):
    """
    The effective ``envoy:discovery`` settings: defaults, then pillar, then ``kwargs``
    (``register`` and ``server`` merge key by key).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_settings
    """
    pillar = __salt__["config.get"]("envoy:discovery", {}) or {}
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DISC_DEFAULTS.items()}
    for source in (pillar, {k: v for k, v in kwargs.items() if k in DISC_DEFAULTS}):
        for key, value in source.items():
            if key not in merged or value is None:
                continue
            merged[key] = {**merged[key], **value} if isinstance(merged[key], dict) and isinstance(value, dict) \
                else value
    if not merged["url"] and merged["address"]:
        merged["url"] = f"http://{merged['address']}"
    return merged


def _disc_url(conf):
    if not conf["url"]:
        raise CommandExecutionError(
            "envoy:discovery:address (or envoy:discovery:url) is not set: nowhere to register")
    return conf["url"].rstrip("/")


def _disc_host_ip(register):
    if register.get("ip"):
        return str(register["ip"])
    candidates = list(__grains__.get("fqdn_ip4") or []) + list(__grains__.get("ipv4") or [])
    for ip in candidates:
        if not ip.startswith("127.") and ip != "0.0.0.0":
            return ip
    raise CommandExecutionError(
        "envoy:discovery:register:ip is not set and no grain (fqdn_ip4, ipv4) has a non-loopback address")


def _disc_tags(register):
    """az, region, instance_id: pillar ``register:tags`` first, then grains, then derived."""
    tags = dict(register.get("tags") or {})
    tags.setdefault("az", __grains__.get("az") or __grains__.get("zone"))
    if not tags["az"]:
        raise CommandExecutionError("envoy:discovery:register:tags:az is not set (nor an `az` or `zone` grain)")
    # AWS naming: the region is the az without its letter (us-east-1a -> us-east-1).
    tags.setdefault("region", __grains__.get("region") or re.sub(r"[a-z]$", "", str(tags["az"])))
    tags.setdefault("instance_id", __grains__.get("instance_id") or __grains__.get("id"))
    return tags


def _disc_read_manifests(manifest_dir):
    """[(file, data)] of every ``*.yaml`` manifest, plus the problems of unreadable ones."""
    import yaml

    found, problems = [], []
    if not os.path.isdir(manifest_dir):
        return found, problems
    for name in sorted(os.listdir(manifest_dir)):
        if not name.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(manifest_dir, name)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
            data = yaml.safe_load(raw)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: unreadable manifest ({exc})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("service"), str):
            problems.append(f"{path}: service: missing (a manifest names its service)")
            continue
        found.append((path, data, hashlib.sha256(raw).hexdigest()[:12]))
    return found, problems


def _disc_plan(host, conf):
    """What this host registers: one entry per manifest with an ingress, plus manifest problems."""
    register = conf["register"]
    manifests, problems = _disc_read_manifests(host["manifest_dir"])
    serving = []
    for path, data, digest in manifests:
        ingress = data.get("ingress")
        if not ingress:
            continue  # a client-only service: nothing to find it by
        port = ingress.get("port") if isinstance(ingress, dict) else None
        if not isinstance(port, int) or not 0 < port < 65536:
            problems.append(f"{path}: ingress.port: missing or not a port")
            continue
        serving.append({"service": data["service"], "port": port, "manifest": path,
                        # Without a pillar revision, the manifest's digest: it changes when the deploy does.
                        "revision": str(register.get("revision") or digest)})
    if not serving:
        return [], problems
    ip, tags = _disc_host_ip(register), _disc_tags(register)
    for entry in serving:
        entry.update(ip=ip, tags=tags)
    return serving, problems


def registrations(**kwargs):
    """
    What ``envoy.register`` would send: one registration per manifest with an ingress.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.registrations
    """
    plan, problems = _disc_plan(settings(**kwargs), discovery_settings(**kwargs))
    return {"registrations": plan, "problems": problems}


def _disc_session():
    import requests

    return requests, requests.Session()


def _disc_error_text(resp):
    try:
        return resp.json().get("error") or resp.text
    except ValueError:
        return resp.text.strip()[:200]


def _disc_for_each_service(kwargs, action, outcome, request, ok_statuses):
    """Send ``request(session, url, entry, timeout)`` for every service this host serves, trying all
    of them; raise naming each one that failed, else return ``{outcome: [...], "url": url}``."""
    conf = discovery_settings(**kwargs)
    url = _disc_url(conf)
    plan, problems = _disc_plan(settings(**kwargs), conf)
    timeout = float(conf["register"]["timeout"])
    requests, session = _disc_session()
    done = []
    with session:
        for entry in plan:
            target = f"{entry['service']} {_disc_endpoint(entry)}"
            try:
                resp = request(session, url, entry, timeout)
            except requests.RequestException as exc:
                problems.append(f"{target}: discovery service unreachable at {url} ({exc.__class__.__name__})")
                continue
            if resp.status_code not in ok_statuses:
                problems.append(f"{target}: refused with HTTP {resp.status_code}: {_disc_error_text(resp)}")
                continue
            done.append(target)
    if problems:
        raise CommandExecutionError(f"envoy.{action}: " + "; ".join(problems), info={outcome: done, "problems": problems})
    return {outcome: done, "url": url}


def _disc_endpoint(entry):
    return f"[{entry['ip']}]:{entry['port']}" if ":" in entry["ip"] else f"{entry['ip']}:{entry['port']}"


def register(**kwargs):
    """
    Register (or heartbeat) every service this host serves with the discovery service:
    ``POST <url>/v1/registration/<service>`` with this host's ip, the ingress port, and tags
    az/region/instance_id (pillar ``envoy:discovery:register:tags``, else grains).
    Raises when any registration failed, after trying all of them.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.register
    """
    def post(session, url, entry, timeout):
        form = {"ip": entry["ip"], "port": str(entry["port"]), "revision": entry["revision"],
                "service_repo_name": entry["service"], "tags": json.dumps(entry["tags"], sort_keys=True)}
        return session.post(f"{url}/v1/registration/{entry['service']}", data=form, timeout=timeout)

    return _disc_for_each_service(kwargs, "register", "registered", post, ok_statuses=(200,))


def deregister(**kwargs):
    """
    Remove this host's services from the discovery service (``DELETE .../<ip>:<port>``); a host
    already gone counts as done. Used when the formula is cleaned or the host retires.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.deregister
    """
    def delete(session, url, entry, timeout):
        return session.delete(f"{url}/v1/registration/{entry['service']}/{_disc_endpoint(entry)}", timeout=timeout)

    return _disc_for_each_service(kwargs, "deregister", "deregistered", delete, ok_statuses=(200, 404))


# The discovery service as a daemon on the hosts pillar ``envoy:discovery:server:hosts`` names.


def _disc_server_paths(host):
    return {"pidfile": os.path.join(host["run_dir"], "envoy-discovery.pid"),
            "log_file": os.path.join(host["log_dir"], "envoy-discovery.log")}


def _disc_rooted(host, path):
    root = (host.get("root") or "").rstrip("/")
    return root + path if root and path and not path.startswith(root + "/") else path


def discovery_server_command(**kwargs):
    """
    The argv the discovery daemon runs with (from ``envoy:discovery:server``).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_command
    """
    host, server = settings(**kwargs), discovery_settings(**kwargs)["server"]
    paths = _disc_server_paths(host)
    argv = [str(server["command"]), "--listen", str(server["listen"]), "--ttl", str(server["ttl"]),
            "--env", str(server["env"]), "--pidfile", paths["pidfile"]]
    if server.get("redis"):
        argv += ["--redis", str(server["redis"])]
    else:
        argv += ["--sqlite", _disc_rooted(host, server["sqlite"])]
    return argv


def _disc_running_pid(pidfile):
    """The pid in ``pidfile`` if that process is alive and is the discovery service, else None."""
    try:
        with open(pidfile) as handle:
            pid = int(handle.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if any(DISC_PROCESS_MARK.encode() in part for part in cmdline) else None


def _disc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            parts = [p.decode(errors="replace") for p in handle.read().split(b"\0") if p]
    except OSError:
        return []
    # A console script runs as `python /path/envoy-discovery ...`: compare from its options on.
    return parts[next((i for i, p in enumerate(parts) if p.startswith("--")), len(parts)):]


def discovery_server_status(**kwargs):
    """
    Whether the discovery daemon runs here, its pid, and whether it runs the configured argv.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_status
    """
    argv = discovery_server_command(**kwargs)
    paths = _disc_server_paths(settings(**kwargs))
    pid = _disc_running_pid(paths["pidfile"])
    current = pid is not None and _disc_cmdline(pid) == argv[1:]
    return {"running": pid is not None, "pid": pid, "current": current, "command": argv, **paths}


def discovery_server_stop(timeout=10, **kwargs):
    """
    Stop the discovery daemon (TERM, then KILL after ``timeout`` seconds).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_stop
    """
    paths = _disc_server_paths(settings(**kwargs))
    pid = _disc_running_pid(paths["pidfile"])
    if pid is None:
        return {"stopped": False, "pid": None}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + float(timeout)
    while _disc_running_pid(paths["pidfile"]) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if _disc_running_pid(paths["pidfile"]) == pid:
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        os.remove(paths["pidfile"])
    return {"stopped": True, "pid": pid}


def _disc_healthy(listen, timeout):
    host, _, port = str(listen).rpartition(":")
    host = "127.0.0.1" if host.strip("[]") in ("", "0.0.0.0", "::") else host.strip("[]")
    url = f"http://{host}:{port}/healthcheck"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    return False


def discovery_server_start(timeout=20, **kwargs):
    """
    Start the discovery daemon (detached, its own session, output to its log file) and wait
    until its /healthcheck answers. Restarts it when it runs with other settings.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_start
    """
    status = discovery_server_status(**kwargs)
    if status["running"] and status["current"]:
        return {"started": False, "pid": status["pid"]}
    if status["running"]:
        discovery_server_stop(**kwargs)
    host = settings(**kwargs)
    server = discovery_settings(**kwargs)["server"]
    for path in (status["pidfile"], status["log_file"]):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if not server.get("redis"):
        os.makedirs(os.path.dirname(_disc_rooted(host, server["sqlite"])), exist_ok=True)
    with open(status["log_file"], "ab") as log_handle:
        try:
            proc = subprocess.Popen(status["command"], stdin=subprocess.DEVNULL, stdout=log_handle,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise CommandExecutionError(
                f"cannot start the discovery service ({status['command'][0]}): {exc}; "
                "set envoy:discovery:server:command") from exc
    if not _disc_healthy(server["listen"], float(timeout)):
        code = proc.poll()
        if code is None:
            proc.kill()
        raise CommandExecutionError(
            f"the discovery service did not become healthy on {server['listen']} within {timeout}s "
            f"(exit code {code}); see {status['log_file']}")
    return {"started": True, "pid": proc.pid}


def registration_status(**kwargs):
    """
    For each service this host serves: is it listed by the discovery service with this host's
    ip:port, and with the same revision and tags (``current``)? ``GET /v1/registration/<service>``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.registration_status
    """
    conf = discovery_settings(**kwargs)
    url = _disc_url(conf)
    plan, problems = _disc_plan(settings(**kwargs), conf)
    timeout = float(conf["register"]["timeout"])
    requests, session = _disc_session()
    status = []
    with session:
        for entry in plan:
            try:
                resp = session.get(f"{url}/v1/registration/{entry['service']}", timeout=timeout)
                resp.raise_for_status()
                hosts = resp.json().get("hosts", [])
            except (requests.RequestException, ValueError) as exc:
                raise CommandExecutionError(
                    f"{entry['service']}: cannot list hosts at {url} ({exc.__class__.__name__}: {exc})") from exc
            mine = next((h for h in hosts if h.get("ip_address") == entry["ip"] and h.get("port") == entry["port"]),
                        None)
            status.append({**entry, "listed": mine is not None,
                           "current": bool(mine) and mine.get("revision") == entry["revision"]
                           and mine.get("tags") == entry["tags"]})
    return {"services": status, "problems": problems, "url": url}
