"""
Applying a files-mode change to a running Envoy without a restart, make-before-break:

1. clusters: the new and changed ones, keeping those about to go (Envoy warms them);
2. route configs of listeners that stay;
3. listeners (new, changed and removed ones: the listeners file is the whole set), then the new
   listeners' route configs;
4. clusters again, without those no longer used; route config files nothing uses any more go.

After each step Envoy must confirm (``xds_acceptance``). A rejection or a timeout puts every file
written so far back, in reverse order, and reports Envoy's reason: nothing a client sees changes.
"""

import hashlib
import json

import yaml

from . import config_files, xds_acceptance
from .errors import EnvoyFormulaError


def kind_of(rel):
    """lds, cds or rds for ``xds/<generation>/<kind>/...``."""
    return rel.split("/")[2]


def _rds_name(rel):
    return rel.split("/")[3]


def _response(text):
    return yaml.safe_load(text) if text else {"version_info": None, "resources": []}


def _names(response):
    return {resource["name"] for resource in response.get("resources", [])}


def _union_clusters(new_text, old_text):
    """The new clusters plus the old ones not in it, as a DiscoveryResponse text (step 1)."""
    new, old = _response(new_text), _response(old_text)
    kept = [c for c in old.get("resources", []) if c["name"] not in _names(new)]
    if not kept:
        return new_text
    resources = new["resources"] + kept
    version = "union-" + hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:16]
    return yaml.safe_dump({"version_info": version, "resources": resources}, sort_keys=True, width=1 << 20)


def changed_files(old, new):
    """{rel: (old text or None, new text or None)} of the xDS files that differ."""
    rels = {rel for rel in set(old) | set(new) if config_files.is_xds(rel)}
    return {rel: (old.get(rel), new.get(rel)) for rel in sorted(rels) if old.get(rel) != new.get(rel)}


class Application:
    """One files-mode change to one running Envoy."""

    def __init__(self, host, old, new, watcher):
        self.host, self.old, self.new, self.watcher = host, old, new, watcher
        self.config_dir, self.group = host["config_dir"], host["group"]
        self.written = []  # (rel, text before) in the order written
        self.steps = []

    def _write(self, rel, text):
        self.written.append((rel, config_files.read(self.config_dir, rel)))
        if text is None:
            config_files.remove(self.config_dir, rel)
        else:
            config_files.write(self.config_dir, rel, text, self.group)

    def _apply(self, kind, rel, text, name=None):
        prefix = xds_acceptance.stat_prefix(kind, name)
        rejected_before = self.watcher.rejected(prefix)
        self._write(rel, text)
        ok, why = self.watcher.confirm(kind, _response(text)["version_info"], rejected_before, name=name)
        if not ok:
            raise EnvoyFormulaError(why)
        self.steps.append(f"{kind}{' ' + name if name else ''} {_response(text)['version_info']} accepted")

    def run(self):
        changes = changed_files(self.old, self.new)
        rds_changes = {rel: texts for rel, texts in changes.items() if kind_of(rel) == "rds"}
        old_listeners_rds = {_rds_name(rel) for rel in self.old if config_files.is_xds(rel) and kind_of(rel) == "rds"}
        lds = next((rel for rel in changes if kind_of(rel) == "lds"), None)
        cds = next((rel for rel in changes if kind_of(rel) == "cds"), None)
        try:
            if cds:
                self._apply("cds", cds, _union_clusters(self.new.get(cds), self.old.get(cds)))
                if not self.watcher.warmed():
                    raise EnvoyFormulaError("new clusters did not finish warming within "
                                            f"{xds_acceptance.WARM_TIMEOUT_S:g}s")
            later = []
            for rel, (_old_text, new_text) in rds_changes.items():
                if new_text is None:
                    continue  # removed at the end, once no listener uses it
                if _rds_name(rel) in old_listeners_rds:
                    self._apply("rds", rel, new_text, name=_rds_name(rel))
                else:
                    self._write(rel, new_text)  # a new listener's: read when the listener comes
                    later.append(rel)
            if lds:
                self._apply("lds", lds, self.new.get(lds))
                if not self.watcher.warmed():
                    raise EnvoyFormulaError(f"new listeners did not finish warming within "
                                            f"{xds_acceptance.WARM_TIMEOUT_S:g}s")
            for rel in later:
                version = _response(self.new[rel])["version_info"]
                ok, why = self.watcher.confirm("rds", version, 0, name=_rds_name(rel))
                if not ok:
                    raise EnvoyFormulaError(why)
            if cds and _response(self.new.get(cds))["version_info"] != self.watcher.version("cluster_manager.cds"):
                self._apply("cds", cds, self.new.get(cds))
            for rel, (_old_text, new_text) in rds_changes.items():
                if new_text is None:
                    self._write(rel, None)
        except EnvoyFormulaError:
            self.roll_back()
            raise
        return self.steps

    def roll_back(self):
        """Every file written goes back, newest first; Envoy reloads each as it is renamed in."""
        for rel, previous in reversed(self.written):
            config_files.put_back(self.config_dir, rel, previous, self.group)
        self.written = []
