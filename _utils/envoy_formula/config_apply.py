"""
Bringing a host's config to what its inputs render, in either mode (``envoy:lookup:config_mode``):

- static: one ``envoy.yaml``; a change is written, and the service state hot restarts Envoy.
- files: a bootstrap plus xDS files. With the bootstrap unchanged and Envoy running it, the change
  is applied live (``xds_apply``: make-before-break, each step confirmed by Envoy, everything put
  back on a rejection) and nothing restarts. A bootstrap change writes a new generation of files
  and the bootstrap; the service state then hot restarts Envoy onto them.

Before anything is written, the effective config (every resource inline) passes the current
bundle's ``envoy --mode validate``. Inputs Envoy refused before fail fast (``rejected_inputs``).
"""

import hashlib
import os
import shutil

from . import (
    config_changes,
    config_file,
    config_files,
    config_render,
    config_validate,
    mesh_identity,
    redaction,
    rejected_inputs,
    restarter_status,
    supervisor,
    xds_acceptance,
    xds_apply,
)
from .errors import EnvoyFormulaError


def resolve_mode(host):
    """files or static for this host: ``auto`` keeps a host that runs a static config static, and
    makes a new install files."""
    configured = host.get("config_mode", "auto")
    if configured in ("files", "static"):
        return configured
    bootstrap = config_files.read(host["config_dir"], config_files.BOOTSTRAP)
    if bootstrap is not None and "path_config_source" not in bootstrap:
        return "static"
    return "files"


def generation_of(files):
    """The xds/<generation>/ a bootstrap of files mode points at (None for static)."""
    for rel in files:
        if config_files.is_xds(rel):
            return rel.split("/")[1]
    return None


def referenced_generations(config_dir):
    """Generations the bootstrap on disk and the one kept for rollback point at."""
    found = set()
    bootstrap = os.path.join(config_dir, config_files.BOOTSTRAP)
    for path in (bootstrap, config_file.previous_path(bootstrap)):
        text = config_files.read(config_dir, os.path.relpath(path, config_dir))
        if text is None:
            continue
        marker = os.path.join(config_dir, "xds") + "/"
        for part in text.split(marker)[1:]:
            found.add(part.split("/", 1)[0])
    return found


def running_bootstrap(host):
    """sha256 of the bootstrap the live epoch started from (None when nothing runs)."""
    if not supervisor.restarter_pid(host):
        return None
    try:
        return restarter_status.read(host["run_dir"]).get("config_sha256")
    except EnvoyFormulaError:
        return None


def _diff(config_dir, old, new, rels):
    parts = [config_file.diff(os.path.join(config_dir, rel), old.get(rel), new.get(rel) or "") for rel in rels]
    return redaction.hide_private_keys("".join(parts))


def comparable(new, old_all):
    """(the files on disk that ``new`` replaces, the paths that differ): the bootstrap, client.json
    and the xDS files of ``new``'s generation (older generations stay for draining epochs)."""
    generation = generation_of(new)
    keep = {config_files.BOOTSTRAP, config_files.CLIENT}
    old = {rel: text for rel, text in old_all.items()
           if rel in keep or (generation and rel.startswith(f"xds/{generation}/"))}
    changed = sorted(rel for rel in set(old) | set(new) if old.get(rel) != new.get(rel)
                     and not (rel == config_files.CLIENT and rel not in new))
    return old, changed


def _plan(host, outputs, old_all):
    """What this run changes: the files, whether live (no restart) or through a restart."""
    new = outputs["files"]
    generation = generation_of(new)
    old, changed = comparable(new, old_all)
    bootstrap_changed = config_files.BOOTSTRAP in changed
    running = running_bootstrap(host)
    live = (outputs["mode"] == "files" and not bootstrap_changed and running is not None
            and running == _sha(old_all.get(config_files.BOOTSTRAP)))
    return {"old": old, "new": new, "changed": changed, "bootstrap_changed": bootstrap_changed, "live": live,
            "generation": generation, "envoy_running": running is not None}


def _describe(plan):
    if not plan["changed"]:
        return "nothing"
    summary = config_changes.summary(plan["old"], plan["new"])
    return "; ".join(summary) if summary else ", ".join(plan["changed"])


def converge(host, pillar, node_id, test=False):
    """{result, comment, changes, restart}: ``restart`` is True when Envoy must restart onto the
    new bootstrap (the service state does it), False when the change was applied live or there is
    none."""
    name = host["config_file"]
    if test and not config_render.bundle_file_exists(host, "bin", "envoy-configgen"):
        return {"result": None, "changes": {}, "restart": False,
                "comment": f"{name} will be rendered once the Envoy bundle is installed"}
    config_dir = host["config_dir"]
    mode = resolve_mode(host)
    inputs = config_render.inputs_digest(host, pillar, node_id, mode)
    if config_file.stamp_matches(name, inputs) and _generated_files_intact(host, mode):
        if not test:
            _tidy(host, mode)
        return {"result": True, "changes": {}, "restart": False,
                "comment": f"{name} is up to date (its inputs are unchanged)"}
    refused = rejected_inputs.refused(host, inputs)
    if refused:
        verb = "would not be changed" if test else "not changed"
        return {"result": False, "changes": {}, "restart": False,
                "comment": (f"{name} {verb}: Envoy refused these very inputs at {refused['at']}: {refused['reason']}. "
                            "Change the inputs, or run envoy.clear_rejected to try them again")}
    outputs = config_render.render_outputs(host, pillar, node_id, mode)
    plan = _plan(host, outputs, config_files.on_disk(config_dir))
    if not plan["changed"]:
        rels = list(plan["new"])
        if config_files.modes_ok(config_dir, rels):
            if not test:
                _tidy(host, outputs["mode"])
                config_file.write_stamp(name, inputs)
            return {"result": True, "changes": {}, "restart": False, "comment": f"{name} is up to date"}
        if not test:
            config_files.set_modes(config_dir, rels)
        verb = "would get" if test else "set to"
        return {"result": None if test else True, "changes": {"mode": "fixed"}, "restart": False,
                "comment": f"{name} and its files {verb} their modes (0640, client.json 0644)"}
    changes = {"mode": outputs["mode"], "summary": config_changes.summary(plan["old"], plan["new"]) or plan["changed"],
               "files": {rel: ("added" if rel not in plan["old"] else "removed" if rel not in plan["new"] else "changed")
                         for rel in plan["changed"]},
               "diff": _diff(config_dir, plan["old"], plan["new"], plan["changed"])}
    absent = mesh_identity.missing(host) if test and host.get("mesh_tls", {}).get("mode", "off") != "off" else []
    if absent:  # mesh TLS going on: Envoy cannot validate a config naming files not written yet
        return {"result": None, "changes": changes, "restart": False,
                "comment": f"{name} would change: {_describe(plan)}; validated once the x509 states wrote "
                           + ", ".join(absent)}
    verdict = _validate(host, outputs, plan)
    if not verdict["ok"]:
        verb = "would not be changed" if test else "not changed"
        return {"result": False, "changes": {}, "restart": False,
                "comment": f"{name} {verb}: envoy rejects the rendered config: {verdict['error']}"}
    how = ("without a restart (applied live, each step confirmed by Envoy)" if plan["live"] else
           "and Envoy restarted onto it" if plan["envoy_running"] and (plan["bootstrap_changed"] or outputs["mode"] == "static")
           else "(Envoy starts with it)" if not plan["envoy_running"] else "")
    restart = plan["envoy_running"] and not plan["live"] and plan["bootstrap_changed"]
    changes["restart"] = "hot" if restart else "none"
    if test:
        return {"result": None, "changes": changes, "restart": restart,
                "comment": f"{name} would change {how}: {_describe(plan)}"}
    try:
        steps = _apply(host, plan)
    except EnvoyFormulaError as exc:
        rejected_inputs.record(host, inputs, redaction.hide_private_keys(str(exc)))
        return {"result": False, "changes": {}, "restart": False,
                "comment": f"{name} not changed: {exc}; the previous files were put back, Envoy serves what it served"}
    if steps:
        changes["applied"] = steps
    _tidy(host, outputs["mode"])
    config_file.write_stamp(name, inputs)
    return {"result": True, "changes": changes, "restart": restart,
            "comment": f"{name} changed {how}: {_describe(plan)}"}


def _generated_files_intact(host, mode):
    return mode == "static" or generation_of(config_files.on_disk(host["config_dir"])) is not None


def _validate(host, outputs, plan):
    """The effective config (every resource inline), and in files mode a changed bootstrap too."""
    effective = outputs.get("effective") or outputs["files"][config_files.BOOTSTRAP]
    verdict = config_validate.validate_text(host, effective)
    if verdict["ok"] and outputs["mode"] == "files" and plan["bootstrap_changed"]:
        files = {rel: text for rel, text in outputs["files"].items() if rel != config_files.CLIENT}
        verdict = config_validate.validate_tree(host, files, host["config_dir"])
    return verdict


def _apply(host, plan):
    config_dir, group = host["config_dir"], host["group"]
    if plan["live"]:
        status = restarter_status.read(host["run_dir"])
        live = next((e for e in status.get("epochs", []) if e.get("epoch") == status.get("live_epoch")), {})
        watcher = xds_acceptance.Watcher(host["admin_port"], live.get("log"))
        steps = xds_apply.Application(host, plan["old"], plan["new"], watcher).run()
        if config_files.CLIENT in plan["changed"] and config_files.CLIENT in plan["new"]:
            config_files.write(config_dir, config_files.CLIENT, plan["new"][config_files.CLIENT], group)
        return steps
    # Not live: the files first, the bootstrap that points at them last.
    for rel in plan["changed"]:
        if rel != config_files.BOOTSTRAP and rel in plan["new"]:
            config_files.write(config_dir, rel, plan["new"][rel], group)
    if config_files.BOOTSTRAP in plan["changed"]:
        config_files.write(config_dir, config_files.BOOTSTRAP, plan["new"][config_files.BOOTSTRAP], group)
    return []


KEEP_GENERATIONS = 3  # besides those referenced: an epoch still draining may watch an older one


def _tidy(host, mode):
    """Files no longer needed: xDS generations that neither the bootstrap nor its rollback copy use
    (the newest few stay, for epochs still draining), and all of xds/ once a host runs static."""
    config_dir = host["config_dir"]
    xds_dir = os.path.join(config_dir, config_files.XDS)
    if not os.path.isdir(xds_dir):
        return
    if mode == "static":
        if running_bootstrap(host) in (None, _sha(config_files.read(config_dir, config_files.BOOTSTRAP))):
            config_files.remove_xds(config_dir)
        return
    names = sorted(os.listdir(xds_dir), key=lambda n: os.path.getmtime(os.path.join(xds_dir, n)), reverse=True)
    wanted = referenced_generations(config_dir) | set(names[:KEEP_GENERATIONS])
    for name in names:
        if name not in wanted:
            shutil.rmtree(os.path.join(xds_dir, name), ignore_errors=True)
            shutil.rmtree(os.path.join(config_dir, config_files.XDS_PREVIOUS, name), ignore_errors=True)


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest() if text is not None else None
