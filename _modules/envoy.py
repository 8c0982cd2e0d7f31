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
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
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
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError) as exc:
        raise _RetryableDownloadError(f"{type(exc).__name__}: {exc}") from exc
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
                if name in seen:
                    raise CommandExecutionError(f"unsafe bundle {label}: member {name!r} appears twice")
                _check_member_type(member, name, seen, label)
                if member.isfile():
                    total = _check_member_size(member, name, total, limits, label)
                seen[name] = member
                _extract_member(tar, member, name, dest, label)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CommandExecutionError(f"bundle {label} is not a readable tar.gz archive: {exc}") from exc
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
    os.makedirs(os.path.join(host["install_dir"], RELEASES), exist_ok=True)
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


# --- operations: supervisor, hot restart, admin API (issue: hot restart done right) -----------


# --- discovery registration (issue: service discovery) ----------------------------------------
