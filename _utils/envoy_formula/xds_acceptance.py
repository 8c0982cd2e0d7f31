"""
Proof that Envoy took a file-delivered xDS update. A file subscription has no ACK or NACK, so the
admin API on 127.0.0.1 is asked: each subscription's ``version_text`` readout must show the version
written, and its ``update_rejected`` counter must not have moved. Envoy's reason for a rejection is
the "config update rejected" line of its own log.
"""

import re

from . import admin_api, processes
from .errors import EnvoyFormulaError

CONFIRM_TIMEOUT_S = 15.0
WARM_TIMEOUT_S = 30.0  # an EDS cluster warms on its first answer (initial_fetch_timeout 15 s)
_REJECTED = re.compile(r"(?:config update rejected|config rejected): (.*)$")


def stat_prefix(kind, name=None):
    """The stats of one subscription: lds, cds, or the rds of one route config (whose HTTP
    connection manager has the same stat prefix in the generator's configs)."""
    return {"lds": "listener_manager.lds", "cds": "cluster_manager.cds"}.get(kind) or f"http.{name}.rds.{name}"


class Watcher:
    """What Envoy said about subscriptions, read through the admin API."""

    def __init__(self, admin_port, log_path=None):
        self.admin = admin_api.Admin(admin_port)
        self.log_path = log_path
        self.log_offset = self._log_size()

    def _log_size(self):
        try:
            with open(self.log_path, "rb") as handle:
                return handle.seek(0, 2)
        except (OSError, TypeError):
            return 0

    def stats_text(self):
        status, body = self.admin.get("/stats?filter=" + "(version_text|update_rejected|warming)", timeout=3)
        if status != 200:
            raise EnvoyFormulaError(f"envoy admin /stats answered HTTP {status}")
        values = {}
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            values[key] = value.strip().strip('"')
        return values

    def rejected(self, prefix):
        return int(self.stats_text().get(f"{prefix}.update_rejected", 0) or 0)

    def version(self, prefix):
        return self.stats_text().get(f"{prefix}.version_text")

    def reason(self):
        """Envoy's reasons for rejections logged since this watcher started (redacted later)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.log_offset)
                text = handle.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return None
        reasons = [m.group(1) for m in map(_REJECTED.search, text.splitlines()) if m]
        return reasons[-1] if reasons else None

    def confirm(self, kind, version, rejected_before, name=None, timeout=CONFIRM_TIMEOUT_S):
        """Wait until the subscription shows ``version`` (accepted) or counts a rejection;
        returns (True, None) or (False, why)."""
        prefix = stat_prefix(kind, name)

        def settled():
            values = self.stats_text()
            if values.get(f"{prefix}.version_text") == version:
                return "accepted"
            if int(values.get(f"{prefix}.update_rejected", 0) or 0) > rejected_before:
                return "rejected"
            return None

        outcome = processes.wait_for(settled, timeout, interval=0.02)
        what = f"{kind} {name}" if name else kind
        if outcome == "accepted":
            return True, None
        if outcome == "rejected":
            return False, f"envoy rejected the {what} update: {self._wait_reason()}"
        return False, (f"envoy did not take the {what} update (version {version}) within {timeout:g}s"
                       + (f": {self.reason()}" if self.reason() else ""))

    def _wait_reason(self):
        return processes.wait_for(self.reason, 2.0, interval=0.05) or "see Envoy's log"

    def warmed(self, timeout=WARM_TIMEOUT_S):
        """Clusters and listeners done warming; False after ``timeout``."""
        def done():
            values = self.stats_text()
            return (int(values.get("cluster_manager.warming_clusters", 0) or 0) == 0
                    and int(values.get("listener_manager.total_listeners_warming", 0) or 0) == 0)

        return bool(processes.wait_for(done, timeout, interval=0.05))
