"""
The bundle format, shared by the builder (``envoy-bundle build``) and the installer on every
host, so the two can never disagree on what a bundle's identity is.

A bundle is a flat tar.gz: ``bin/envoy``, the launchers ``bin/envoy-configgen`` and
``bin/envoy-restarter``, their code under ``lib/``, and ``bundle.json``:

    {"format": 1, "bundle_id": "<envoy version>-<content hash[:12]>", "content_sha256": ...,
     "envoy_version": ..., "hot_restart_version": ..., "source_commit": ...,
     "members": {"<path>": {"sha256": ..., "size": ..., "mode": "0755"}, ...}}
"""

import hashlib
import re

FORMAT = 1
MANIFEST = "bundle.json"
# Written by the installer beside the members (archive sha256, install and activation times);
# a bundle may not contain a member of this name.
INSTALL_RECORD = ".install.json"
BUNDLE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_]*-[0-9a-f]{12}")


def member_entry(sha256, size, mode):
    """One member as bundle.json lists it (``mode`` an int such as 0o755)."""
    return {"sha256": sha256, "size": size, "mode": f"{mode:04o}"}


def content_hash(members):
    """The bundle's identity: a hash of every member's path, mode, size and sha256
    (``members``: bundle.json's ``members`` mapping). The source commit is not part of it, so
    identical content always gets the identical id."""
    digest = hashlib.sha256(f"envoy-bundle format {FORMAT}\n".encode())
    for path in sorted(members):
        meta = members[path]
        digest.update(f"{path}\t{meta['mode']}\t{meta['size']}\t{meta['sha256']}\n".encode())
    return digest.hexdigest()


def bundle_id(envoy_version, content_sha256):
    return f"{envoy_version}-{content_sha256[:12]}"


def id_matches_content(manifest, content_sha256):
    return (manifest.get("content_sha256") == content_sha256
            and str(manifest.get("bundle_id", "")).endswith("-" + content_sha256[:12]))
