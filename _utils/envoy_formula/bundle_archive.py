"""
Unpacking a bundle archive safely. Refused, naming the member: absolute paths, ``..``, links
leading out of the release, device files and fifos, duplicate names, the installer's own record
name, and members or totals over the size limits. Python's ``tarfile`` data filter (3.11.4+,
3.10.12+) runs as a second, well-kept guard.
"""

import os
import posixpath
import re
import tarfile
import zlib

from . import bundle_format
from .errors import EnvoyFormulaError

LIMITS = {"max_member_bytes": 512 << 20, "max_total_bytes": 1 << 30, "max_members": 10000}


def _refuse(label, what):
    return EnvoyFormulaError(f"unsafe bundle {label}: {what}")


def member_name(member, label):
    """The member's normalized relative path."""
    name = member.name
    if name.startswith("/") or re.match(r"[A-Za-z]:[\\/]", name):
        raise _refuse(label, f"member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(label, f"member {name!r} contains '..'")
    if not parts:
        raise _refuse(label, f"a member has an empty name ({name!r})")
    return "/".join(parts)


def check_member_type(member, name, seen, label):
    if member.isfile() or member.isdir():
        return
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise _refuse(label, f"symlink {name!r} -> {target!r} points outside the release")
        return
    if member.islnk():
        target = posixpath.normpath(member.linkname)
        if not (target in seen and seen[target].isfile()):
            raise _refuse(label, f"hard link {name!r} -> {member.linkname!r} does not point to a regular "
                                 "file earlier in the archive")
        return
    kind = ("a device file" if member.ischr() or member.isblk() else
            "a fifo" if member.isfifo() else f"of unsupported tar type {member.type!r}")
    raise _refuse(label, f"member {name!r} is {kind}")


def check_member_size(member, name, total, limits, label):
    if member.size > limits["max_member_bytes"]:
        raise _refuse(label, f"member {name!r} is {member.size} bytes, over the "
                             f"{limits['max_member_bytes']}-byte limit per member")
    if total + member.size > limits["max_total_bytes"]:
        raise _refuse(label, f"members add up to more than the {limits['max_total_bytes']}-byte limit "
                             f"(at {name!r})")
    return total + member.size


def _extract(tar, member, name, dest, label):
    try:
        if hasattr(tarfile, "data_filter"):
            tar.extract(member, dest, filter="data")
        else:
            tar.extract(member, dest)
    except tarfile.FilterError as exc:
        raise _refuse(label, f"member {name!r} refused: {exc}") from exc


def unpack(archive, dest, label=None, limits=None):
    """Unpack ``archive`` into the new directory ``dest``; returns the member names. The caller
    removes ``dest`` on failure."""
    label = label or archive
    limits = {**LIMITS, **(limits or {})}
    os.makedirs(dest)
    seen, total = {}, 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                if len(seen) >= limits["max_members"]:
                    raise _refuse(label, f"more than {limits['max_members']} members")
                name = member_name(member, label)
                if name == bundle_format.INSTALL_RECORD:
                    raise _refuse(label, f"member {name!r} is a name the installer uses")
                if name in seen:
                    raise _refuse(label, f"member {name!r} appears twice")
                check_member_type(member, name, seen, label)
                if member.isfile():
                    total = check_member_size(member, name, total, limits, label)
                seen[name] = member
                _extract(tar, member, name, dest, label)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise EnvoyFormulaError(f"bundle {label} is not a readable tar.gz archive: {exc}") from exc
    for top, dirs, _files in os.walk(dest):
        for name in dirs:  # readable by the envoy user whatever the minion's umask
            if not os.path.islink(os.path.join(top, name)):
                os.chmod(os.path.join(top, name), 0o755)
    os.chmod(dest, 0o755)
    return sorted(seen)
