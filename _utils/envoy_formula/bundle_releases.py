"""
Installed bundle releases: ``<install_dir>/releases/<bundle id>/`` and the ``current`` symlink
pointing at one of them. Nothing reaches ``releases/`` or ``current`` before the archive's
sha256, every member against bundle.json, and ``bin/envoy --version`` have been checked; a no-op
install downloads nothing; the newest ``keep`` releases stay, never the current or previous one
pruned.
"""

import contextlib
import datetime
import logging
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import time

from . import atomic_files, bundle_archive, bundle_format, bundle_sources, redaction
from .errors import EnvoyFormulaError

log = logging.getLogger(__name__)

RELEASES = "releases"
WORK_PREFIX = ".tmp-bundle-"
STALE_WORK_S = 3600  # a live run's work dir is younger than this
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def releases_dir(host):
    return os.path.join(host["install_dir"], RELEASES)


def require_sha256(source, sha256):
    value = str(sha256 or "").strip().lower()
    label = redaction.url_for_messages(source)
    if not value:
        raise EnvoyFormulaError(f"refusing to install bundle {label}: a sha256 is required for every bundle "
                                "source (pillar envoy:bundle:sha256, or sha256=...)")
    if not _SHA256.fullmatch(value):
        raise EnvoyFormulaError(f"bundle {label}: sha256 {sha256!r} is not 64 hex digits")
    return value


# --- what is installed ---------------------------------------------------------------------


def current_release_id(host):
    link = host["current_dir"]
    if not os.path.islink(link):
        return None
    return os.path.basename(os.readlink(link).rstrip("/")) or None


def release_info(host, bundle_id, current_id):
    path = os.path.join(releases_dir(host), bundle_id)
    manifest, record = {}, {}
    with contextlib.suppress(OSError, ValueError):
        manifest = atomic_files.read_json(os.path.join(path, bundle_format.MANIFEST))
    with contextlib.suppress(OSError, ValueError):
        record = atomic_files.read_json(os.path.join(path, bundle_format.INSTALL_RECORD))
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


def brief(info):
    return {"bundle_id": info["bundle_id"], "envoy_version": info["envoy_version"]} if info else None


def installed(host):
    """Installed releases, most recently activated first."""
    try:
        names = [n for n in os.listdir(releases_dir(host))
                 if bundle_format.BUNDLE_ID.fullmatch(n) and os.path.isdir(os.path.join(releases_dir(host), n))]
    except FileNotFoundError:
        return []
    current_id = current_release_id(host)
    infos = [release_info(host, name, current_id) for name in names]
    return sorted(infos, key=lambda i: (i["activated_at"] or i["installed_at"] or "", i["bundle_id"]), reverse=True)


def current_manifest(host):
    """bundle.json of the current release, or None."""
    try:
        return atomic_files.read_json(os.path.join(host["current_dir"], bundle_format.MANIFEST))
    except (OSError, ValueError):
        return None


def plan(host, source, sha256):
    """What ``install`` would do, decided without downloading: ``none`` (this archive is current),
    ``switch`` (an installed release came from it) or ``download``."""
    digest = require_sha256(source, sha256)
    releases = installed(host)
    current = next((i for i in releases if i["current"]), None)
    if current and current["archive_sha256"] == digest:
        return {"action": "none", "sha256": digest, "old": brief(current), "release": brief(current)}
    match = next((i for i in releases if i["archive_sha256"] == digest), None)
    return {"action": "switch" if match else "download", "sha256": digest, "old": brief(current),
            "release": brief(match)}


# --- checking a release ----------------------------------------------------------------------


def _load_manifest(release_dir, label):
    path = os.path.join(release_dir, bundle_format.MANIFEST)
    name = bundle_format.MANIFEST
    if os.path.islink(path) or not os.path.isfile(path):
        raise EnvoyFormulaError(f"bundle {label} has no {name}")
    try:
        manifest = atomic_files.read_json(path)
    except ValueError as exc:
        raise EnvoyFormulaError(f"bundle {label}: {name} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise EnvoyFormulaError(f"bundle {label}: {name} is not a JSON object")
    problems = []
    if manifest.get("format") != bundle_format.FORMAT:
        problems.append(f"format {manifest.get('format')!r} (this formula reads {bundle_format.FORMAT})")
    if not bundle_format.BUNDLE_ID.fullmatch(str(manifest.get("bundle_id", ""))):
        problems.append(f"bundle_id {manifest.get('bundle_id')!r}")
    if not isinstance(manifest.get("members"), dict):
        problems.append("members (must be an object)")
    if problems:
        raise EnvoyFormulaError(f"bundle {label}: {name} has a bad " + ", ".join(problems))
    return manifest


def _files_on_disk(release_dir):
    found = set()
    for top, dirs, files in os.walk(release_dir):
        rel_top = os.path.relpath(top, release_dir).replace(os.sep, "/")
        for entry in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            found.add(posixpath.normpath(posixpath.join(rel_top, entry)))
    return found - {bundle_format.MANIFEST, bundle_format.INSTALL_RECORD}


def _verify_member(release_dir, path, meta, label):
    full = os.path.join(release_dir, path)
    if os.path.islink(full) or not os.path.isfile(full):
        raise EnvoyFormulaError(f"bundle {label}: member {path!r} is not a regular file")
    stat = os.stat(full)
    mode = f"{stat.st_mode & 0o7777:04o}"
    if mode != str(meta.get("mode")):
        raise EnvoyFormulaError(f"bundle {label}: member {path!r} has mode {mode}, bundle.json says {meta.get('mode')}")
    actual = atomic_files.sha256_of(full) if stat.st_size == meta.get("size") else None
    if actual != meta.get("sha256"):
        raise EnvoyFormulaError(
            f"bundle {label}: member {path!r} does not match {bundle_format.MANIFEST} (size {stat.st_size}, "
            f"sha256 {actual or 'not computed'}; expected size {meta.get('size')}, sha256 {meta.get('sha256')}): "
            "tampered or corrupt")


def verify(release_dir, label=None):
    """Every member of an unpacked bundle against bundle.json (none missing or extra; type, size,
    mode, sha256) and the bundle id against the members; returns bundle.json."""
    label = label or release_dir
    manifest = _load_manifest(release_dir, label)
    members = manifest["members"]
    found = _files_on_disk(release_dir)
    missing, extra = sorted(set(members) - found), sorted(found - set(members))
    if missing:
        raise EnvoyFormulaError(f"bundle {label}: {missing} listed in {bundle_format.MANIFEST} but missing")
    if extra:
        raise EnvoyFormulaError(f"bundle {label}: {extra} present but not listed in {bundle_format.MANIFEST}")
    for path in sorted(members):
        _verify_member(release_dir, path, members[path], label)
    content = bundle_format.content_hash(members)
    if not bundle_format.id_matches_content(manifest, content):
        raise EnvoyFormulaError(
            f"bundle {label}: bundle id {manifest['bundle_id']} does not match its members (content {content[:12]})")
    return manifest


def check_envoy_runs(release_dir, manifest, label):
    binary = os.path.join(release_dir, "bin", "envoy")
    if "bin/envoy" not in manifest["members"] or not os.path.isfile(binary):
        raise EnvoyFormulaError(f"bundle {label} has no bin/envoy")
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, errors="replace",
                              timeout=60, check=False)
    except OSError as exc:
        raise EnvoyFormulaError(
            f"bundle {label}: bin/envoy cannot run on this host ({exc.strerror}): wrong architecture?") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvoyFormulaError(f"bundle {label}: bin/envoy --version did not answer in 60 s") from exc
    if proc.returncode != 0:
        raise EnvoyFormulaError(f"bundle {label}: bin/envoy --version exited {proc.returncode}: "
                                f"{proc.stderr.strip()[:300]}")
    if f"/{manifest.get('envoy_version')}/" not in proc.stdout:
        raise EnvoyFormulaError(f"bundle {label}: bin/envoy --version says {proc.stdout.strip()[:200]!r}, "
                                f"bundle.json says envoy {manifest.get('envoy_version')}")


# --- installing ----------------------------------------------------------------------------


def flip_current(host, bundle_id):
    """Point ``current`` at releases/<bundle_id> atomically: a temp symlink renamed over it."""
    link = host["current_dir"]
    if os.path.lexists(link) and not os.path.islink(link):
        raise EnvoyFormulaError(f"{link} exists and is not a symlink; not replacing it")
    tmp = os.path.join(host["install_dir"], f".current-{os.getpid()}-{time.monotonic_ns()}")
    os.symlink(os.path.join(RELEASES, bundle_id), tmp)
    try:
        os.replace(tmp, link)
    except OSError as exc:
        os.unlink(tmp)
        raise EnvoyFormulaError(f"cannot point {link} at release {bundle_id}: {exc}") from exc
    atomic_files.fsync_dir(host["install_dir"])


def _make_release_dirs(host):
    """install_dir/releases, traversable by the envoy user whatever the minion's umask."""
    for path in (host["install_dir"], releases_dir(host)):
        if not os.path.isdir(path):
            os.makedirs(path)
            os.chmod(path, 0o755)


def _clean_stale_work_dirs(install_dir):
    cutoff = time.time() - STALE_WORK_S
    for name in os.listdir(install_dir):
        path = os.path.join(install_dir, name)
        if name.startswith(WORK_PREFIX) and os.path.getmtime(path) < cutoff:
            shutil.rmtree(path, ignore_errors=True)


def _prune(host, keep, protected):
    pruned = []
    for info in installed(host)[keep:]:
        if info["bundle_id"] in protected or info["current"]:
            continue
        # renamed first so a half-deleted release never looks installed
        doomed = os.path.join(host["install_dir"], f"{WORK_PREFIX}prune-{info['bundle_id']}")
        os.rename(info["path"], doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        pruned.append(info["bundle_id"])
    return pruned


def keep_count(keep, host):
    value = host["keep_releases"] if keep in (None, "") else keep
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise EnvoyFormulaError(f"keep must be a whole number >= 1, not {keep!r}")
    return value


def _stamp(release_dir, digest, label, activated):
    path = os.path.join(release_dir, bundle_format.INSTALL_RECORD)
    try:
        record = atomic_files.read_json(path)
    except (OSError, ValueError):
        record = {"installed_at": _now_iso()}
    record.update({"archive_sha256": digest, "source": label})
    if activated:
        record["activated_at"] = _now_iso()
    atomic_files.write_json(path, record)


def _install_downloaded(host, source, digest, label, limits, cache_salt_file, salt_cache_dir):
    """Fetch, verify and unpack into releases/<id>; returns the bundle id. ``current`` untouched."""
    work = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=host["install_dir"])
    archive = None
    try:
        archive = bundle_sources.fetch(source, work, label, limits["max_total_bytes"], cache_salt_file)
        actual = atomic_files.sha256_of(archive)
        if actual != digest:
            raise EnvoyFormulaError(f"bundle {label}: sha256 mismatch (expected {digest}, got {actual}); "
                                    "not installed")
        staging = os.path.join(work, "release")
        bundle_archive.unpack(archive, staging, label, limits)
        manifest = verify(staging, label)
        check_envoy_runs(staging, manifest, label)
        bundle_id = manifest["bundle_id"]
        target = os.path.join(releases_dir(host), bundle_id)
        if os.path.lexists(target):
            if bundle_id == current_release_id(host):
                # identical content (the id hashes every member): keep the files, remember this archive
                _stamp(target, digest, label, activated=False)
                return bundle_id
            os.rename(target, os.path.join(work, "replaced"))
        _stamp(staging, digest, label, activated=False)
        os.rename(staging, target)
        return bundle_id
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if archive and salt_cache_dir and archive.startswith(os.path.join(salt_cache_dir, "")):
            with contextlib.suppress(OSError):
                os.unlink(archive)  # the release holds the content now; don't keep a second copy


def _reusable(info, label):
    """Re-verify an installed release before pointing ``current`` back at it (a rollback)."""
    try:
        check_envoy_runs(info["path"], verify(info["path"], label), label)
        return True
    except EnvoyFormulaError as exc:
        log.warning("installed release %s failed verification, downloading again: %s", info["path"], exc)
        return False


def install(host, source, sha256, keep=None, limits=None, cache_salt_file=None, salt_cache_dir=None):
    """Make the archive at ``source`` with ``sha256`` the current release; returns
    ``{changed, downloaded, old, new, pruned, comment}``. On any failure ``current`` stays as it
    was and no temp file is left behind."""
    label = redaction.url_for_messages(source)
    decided = plan(host, source, sha256)
    old = decided["old"]
    keep = keep_count(keep, host)
    result = {"changed": False, "downloaded": False, "old": old, "new": old, "pruned": []}
    if decided["action"] == "none":
        result["comment"] = f"bundle {old['bundle_id']} (sha256 {decided['sha256'][:12]}...) is already current"
        return result
    _make_release_dirs(host)
    _clean_stale_work_dirs(host["install_dir"])
    new_id = None
    if decided["action"] == "switch":
        info = release_info(host, decided["release"]["bundle_id"], None)
        new_id = info["bundle_id"] if _reusable(info, label) else None
    if new_id is None:
        new_id = _install_downloaded(host, source, decided["sha256"], label,
                                     {**bundle_archive.LIMITS, **(limits or {})}, cache_salt_file, salt_cache_dir)
        result["downloaded"] = True
    _stamp(os.path.join(releases_dir(host), new_id), decided["sha256"], label, activated=True)
    if old is None or old["bundle_id"] != new_id:
        flip_current(host, new_id)
        result["changed"] = True
    new = brief(release_info(host, new_id, new_id))
    result["new"] = new
    result["pruned"] = _prune(host, keep, {new_id, old["bundle_id"] if old else None})
    result["changed"] = result["changed"] or bool(result["pruned"])
    if old and old["bundle_id"] == new_id:
        result["comment"] = f"bundle {new_id} from {label} has the content of the current bundle; nothing to switch"
    else:
        result["comment"] = (f"installed bundle {new_id} (envoy {new['envoy_version']}) from {label}"
                             + (f", was {old['bundle_id']}" if old else ""))
    return result
