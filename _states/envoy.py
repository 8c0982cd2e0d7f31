"""
States for Envoy: ``envoy.bundle_installed``, ``envoy.config_managed``, ``envoy.running``.

Every state builds ``ret``, fills ``changes`` before the test check, returns ``result: None``
under ``test=True``, is idempotent, and turns ``CommandExecutionError`` into ``result: False``
with a readable comment. Secrets never reach ``changes`` or ``comment``.
"""

import json
import logging
import os
import shutil
import tempfile

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "envoy"


def __virtual__():
    if "envoy.settings" in __salt__:
        return __virtualname__
    return (False, "the envoy execution module is not available (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


# --- bundles -----------------------------------------------------------------------------------


def _bundle_desc(brief):
    return f"{brief['bundle_id']} (envoy {brief['envoy_version']})" if brief else "none"


def bundle_installed(name, sha256=None, keep=None, **kwargs):
    """
    Make the bundle at ``name`` (salt://, https://, http:// or file://) with archive ``sha256``
    the current release. Idempotent: when that archive is already current nothing is downloaded.

    .. code-block:: yaml

        envoy-bundle-installed:
          envoy.bundle_installed:
            - name: https://repo.example/envoy-bundle-1.40.0-0123456789ab.tar.gz
            - sha256: <64 hex>
            - keep: 3
    """
    ret = _ret(name)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    try:
        plan = __salt__["envoy.bundle_plan"](name, sha256=sha256, **kwargs)
    except CommandExecutionError as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    if plan["action"] == "none":
        ret["comment"] = f"bundle {_bundle_desc(plan['old'])} is already current; nothing downloaded"
        return ret
    if plan["action"] == "switch":
        new = plan["release"]
        predicted = f"switch to installed release {_bundle_desc(new)}"
    else:
        new = f"bundle with sha256 {plan['sha256']}"
        predicted = f"download and install the {new} from {name}"
    ret["changes"] = {"old": plan["old"], "new": new}
    if __opts__["test"]:
        ret.update(result=None, comment=f"would {predicted} (current: {_bundle_desc(plan['old'])})")
        return ret
    try:
        done = __salt__["envoy.install_bundle"](name, sha256=sha256, keep=keep, **kwargs)
    except CommandExecutionError as exc:
        ret.update(result=False, changes={}, comment=f"bundle not installed, current left as it was: {exc}")
        return ret
    ret["changes"] = {"old": done["old"], "new": done["new"]} if done["old"] != done["new"] else {}
    if done["pruned"]:
        ret["changes"]["pruned"] = done["pruned"]
    ret["comment"] = done["comment"]
    return ret


# --- config ------------------------------------------------------------------------------------

_CONFIG_MODE = 0o640
_CONFIG_KEYS = ("root", "install_dir", "config_dir", "manifest_dir", "log_dir", "user", "group", "admin_port")


def _config_opts(kwargs):
    return {k: v for k, v in kwargs.items() if k in _CONFIG_KEYS}


def _config_read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _config_diff(path, old, new):
    import difflib

    diff = difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                fromfile=path if old is not None else "/dev/null", tofile=path)
    return __salt__["envoy.redact"]("".join(diff))


def _config_owner(group):
    """(uid, gid) for the config file when root: root and the envoy group, so Envoy can read it."""
    if os.geteuid() != 0:
        return None
    import grp

    try:
        return 0, grp.getgrnam(group).gr_gid
    except KeyError:
        return 0, 0


def _config_write_temp(directory, text, group):
    fd, tmp = tempfile.mkstemp(prefix=".envoy.yaml.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _CONFIG_MODE)
        owner = _config_owner(group)
        if owner:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _config_install(name, tmp):
    """The live config becomes ``.prev`` (a hard link, then rename: both steps atomic), the
    validated temp file becomes the live config."""
    if os.path.exists(name):
        prev_tmp = name + f".prev.{os.getpid()}.tmp"
        if os.path.exists(prev_tmp):
            os.unlink(prev_tmp)
        try:
            os.link(name, prev_tmp)
        except OSError:  # a filesystem without hard links
            shutil.copy2(name, prev_tmp)
        os.replace(prev_tmp, name + ".prev")
    os.replace(tmp, name)
    dir_fd = os.open(os.path.dirname(name), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _config_stamp_path(name):
    return os.path.join(os.path.dirname(name), "." + os.path.basename(name) + ".inputs.json")


def _config_file_sha256(name):
    import hashlib

    try:
        with open(name, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None


def _config_stamp_matches(name, inputs):
    """True when the config on disk is the one rendered from these very inputs (and is 0640):
    nothing to render. A hand edit, a rollback or a lost stamp falls through to a real render."""
    try:
        with open(_config_stamp_path(name), encoding="utf-8") as handle:
            stamp = json.load(handle)
        mode_ok = (os.stat(name).st_mode & 0o777) == _CONFIG_MODE
    except (OSError, ValueError):
        return False
    return mode_ok and stamp.get("inputs") == inputs and stamp.get("config_sha256") == _config_file_sha256(name)


def _config_write_stamp(name, inputs):
    """Record which inputs rendered the config on disk (written atomically; a failure only costs
    a render next time)."""
    path = _config_stamp_path(name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=os.path.dirname(name))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"inputs": inputs, "config_sha256": _config_file_sha256(name)}, handle)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not record the config's inputs in %s: %s", path, exc)


def config_managed(name, **kwargs):
    """
    This host's Envoy config at ``name``: rendered by the current bundle's generator (manifests,
    pillar ``envoy``, host facts), validated by the current bundle's envoy, then written atomically
    (mode 0640) with the previous config kept as ``<name>.prev`` for rollback. Changes carry a
    unified diff with private keys redacted. Any error (bad manifest or pillar, Envoy rejects the
    config, no bundle) gives result False and leaves the file as it was.

    .. code-block:: yaml

        envoy-config-file-managed:
          envoy.config_managed:
            - name: /etc/envoy/envoy.yaml
            - require:
              - envoy: envoy-bundle-installed
    """
    ret = _ret(name)
    opts = _config_opts(kwargs)
    try:
        host = __salt__["envoy.settings"](**opts)
        if __opts__["test"] and not os.path.exists(os.path.join(host["current_dir"], "bin", "envoy-configgen")):
            # A first test run: the bundle state only predicts its install, so nothing can render yet.
            ret.update(result=None, comment=f"{name} will be rendered once the Envoy bundle is installed")
            return ret
        inputs = __salt__["envoy.render_inputs_digest"](**opts)
        if _config_stamp_matches(name, inputs):
            ret["comment"] = f"{name} is up to date (its inputs are unchanged)"
            return ret
        new = __salt__["envoy.render"](redact=False, **opts)
    except CommandExecutionError as exc:
        ret.update(result=False, comment=f"{name} not changed: {exc}")
        return ret
    old = _config_read(name)
    mode_ok = old is None or (os.stat(name).st_mode & 0o777) == _CONFIG_MODE
    if old == new and mode_ok:
        if not __opts__["test"]:
            _config_write_stamp(name, inputs)
        ret["comment"] = f"{name} is up to date"
        return ret
    if old == new:
        ret["changes"] = {"mode": oct(_CONFIG_MODE)}
    else:
        ret["changes"] = {"diff": _config_diff(name, old, new)}
        if old is not None:
            ret["changes"]["previous"] = name + ".prev"
    try:
        ret = _config_apply(name, ret, host, new, changed=old != new)
        if ret["result"] is True:
            _config_write_stamp(name, inputs)
        return ret
    except (CommandExecutionError, OSError) as exc:
        ret.update(result=False, changes={}, comment=f"{name} not changed: {__salt__['envoy.redact'](str(exc))}")
        return ret


def _config_apply(name, ret, host, new, changed):
    opts = {k: host[k] for k in _CONFIG_KEYS if k in host}
    if not changed:  # only the mode drifted
        if __opts__["test"]:
            ret.update(result=None, comment=f"{name} would get mode {oct(_CONFIG_MODE)}")
        else:
            os.chmod(name, _CONFIG_MODE)
            ret["comment"] = f"{name} set to mode {oct(_CONFIG_MODE)}"
        return ret
    directory = os.path.dirname(name)
    if __opts__["test"]:
        # Validate from a private temp dir: test=True writes nothing next to the live config.
        workdir = tempfile.mkdtemp(prefix="envoy-config-test-")
        try:
            verdict = __salt__["envoy.validate"](path=_config_write_temp(workdir, new, host["group"]), **opts)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if not verdict["ok"]:
            ret.update(result=False, changes={}, comment=f"{name} would not be changed: envoy rejects the "
                       f"rendered config: {verdict['error']}")
            return ret
        ret.update(result=None, comment=f"{name} would be updated (rendered config validated by envoy)")
        return ret
    os.makedirs(directory, exist_ok=True)
    tmp = _config_write_temp(directory, new, host["group"])
    try:
        verdict = __salt__["envoy.validate"](path=tmp, **opts)
        if not verdict["ok"]:
            ret.update(result=False, changes={}, comment=f"{name} not changed: envoy rejects the rendered "
                       f"config: {verdict['error']}")
            return ret
        _config_install(name, tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    kept = f"; previous config kept as {name}.prev" if "previous" in ret["changes"] else ""
    ret["comment"] = f"{name} updated (validated by envoy){kept}"
    return ret


# --- running / mod_watch -----------------------------------------------------------------------

# What states pass on to the module: host settings (map.jinja's dict) and restart timings.
_RUNNING_KEYS = ("root", "install_dir", "config_dir", "manifest_dir", "log_dir", "run_dir", "user", "group",
                 "base_id", "admin_port", "supervisor", "drain_time_s", "parent_shutdown_time_s",
                 "live_timeout_s", "stop_timeout_s", "full_restart_drain_s", "concurrency", "envoy_args")


def _running_opts(kwargs):
    return {k: v for k, v in kwargs.items() if k in _RUNNING_KEYS}


def running(name, **kwargs):
    """
    Envoy runs under its supervisor (the restarter, as a systemd unit or a detached daemon). If the
    restarter died and left an envoy behind, that envoy is stopped before the restarter starts again.
    Watching the bundle and config states, a change hot restarts Envoy (see ``mod_watch``).

    .. code-block:: yaml

        envoy-service-running:
          envoy.running:
            - watch:
              - envoy: envoy-bundle-installed
              - envoy: envoy-config-file-managed
    """
    ret = _ret(name)
    opts = _running_opts(kwargs)
    try:
        status = __salt__["envoy.status"](**opts)
        if status["running"] and status["epoch"] is None and not __opts__["test"]:
            # The restarter runs but no epoch is LIVE (starting, or crash looping): wait and see.
            out = __salt__["envoy.start"](**opts)
            ret["result"] = out["result"]
            ret["comment"] = out["comment"]
            return ret
        if status["running"]:
            ret["comment"] = (f"envoy runs under the restarter (pid {status['restarter_pid']}, "
                              f"{status['supervisor']}), epoch {status['epoch']}, {status['state']}")
            return ret
        left_over = __salt__["envoy.orphans"](**opts)
        ret["changes"] = {"started": True, "supervisor": status["supervisor"]}
        if left_over:
            ret["changes"]["orphans_stopped"] = left_over
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"envoy would be started ({status['supervisor']})" + (
                f" after stopping orphaned envoy pids {left_over}" if left_over else "")
            return ret
        out = __salt__["envoy.start"](**opts)
        if not out["started"]:  # another run started it while we waited for the lock
            ret["changes"] = {}
            ret["comment"] = out["comment"]
            return ret
        ret["changes"].update(restarter_pid=out.get("restarter_pid"), epoch=out.get("epoch"))
        if out["result"]:
            ret["comment"] = f"started envoy under the restarter (pid {out['restarter_pid']}), epoch 0 LIVE"
        else:
            ret["result"] = False
            ret["comment"] = f"started the restarter (pid {out['restarter_pid']}) but envoy is not LIVE: {out['error']}"
    except CommandExecutionError as exc:
        ret["result"] = False
        ret["comment"] = str(exc)
    return ret


def mod_watch(name, sfun=None, **kwargs):
    """
    A watched bundle or config changed: hot restart when the current bundle's ``--hot-restart-version``
    equals the running Envoy's, else a drained full restart; start Envoy if nothing runs. If the new
    epoch fails, the previous config is put back and the result is False with Envoy's error. A lock
    keeps concurrent runs from overlapping: a run that finds another run already restarted onto the
    same bundle and config reports nothing to do.
    """
    ret = _ret(name)
    opts = _running_opts(kwargs)
    if __opts__["test"]:
        ret["result"] = None
        try:
            plan = __salt__["envoy.restart_kind"](**opts)
        except CommandExecutionError as exc:  # e.g. the bundle a real run would install is not there yet
            ret["changes"] = {"restart": "unknown"}
            ret["comment"] = f"envoy would be restarted; which kind cannot be told yet: {exc}"
            return ret
        ret["changes"] = {"restart": plan["kind"]}
        verb = {"start": "be started", "hot": "be hot restarted", "full": "get a drained full restart"}
        ret["comment"] = f"envoy would {verb[plan['kind']]}: {plan['reason']}"
        return ret
    try:
        out = __salt__["envoy.reload"](**opts)
    except CommandExecutionError as exc:
        ret["result"] = False
        ret["comment"] = str(exc)
        return ret
    if out["kind"] == "none":
        ret["comment"] = out["comment"]
        return ret
    ret["changes"] = {"restart": out["kind"], "outcome": "success" if out["result"] else "failed",
                      "epoch": out.get("epoch")}
    for key in ("duration_s", "steps", "rolled_back"):
        if key in out:
            ret["changes"][key] = out[key]
    kind = {"start": "start", "hot": "hot restart", "full": "drained full restart"}[out["kind"]]
    if out["result"]:
        ret["comment"] = f"envoy {kind} done: epoch {out.get('epoch')} LIVE ({out.get('reason')})"
    else:
        ret["result"] = False
        ret["comment"] = f"envoy {kind} failed: {out.get('error')}" + (
            "; the previous config was put back" if out.get("rolled_back") else "")
        if out["kind"] == "hot":
            ret["comment"] += "; the running epoch keeps serving"
    return ret


def dead(name, **kwargs):
    """
    Envoy and its supervisor are stopped (every epoch drained by the restarter, then killed after
    the stop timeout), and no envoy of this host is left behind. The ``clean`` side of ``running``.

    .. code-block:: yaml

        envoy-service-clean-dead:
          envoy.dead: []
    """
    ret = _ret(name)
    opts = _running_opts(kwargs)
    try:
        status = __salt__["envoy.status"](**opts)
        left_over = __salt__["envoy.orphans"](**opts) if not status["running"] else []
        if not status["running"] and not left_over:
            ret["comment"] = "envoy is not running"
            return ret
        ret["changes"] = {"stopped": True, "restarter_pid": status["restarter_pid"]}
        if left_over:
            ret["changes"]["orphans_stopped"] = left_over
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = "envoy would be stopped"
            return ret
        out = __salt__["envoy.stop"](**opts)
        ret["changes"]["orphans_stopped"] = out.get("orphans_stopped") or []
        ret["comment"] = "envoy stopped"
    except CommandExecutionError as exc:
        ret.update(result=False, changes={}, comment=str(exc))
    return ret


# --- discovery (issue: service discovery) -------------------------------------------------------

# Host settings (map.jinja's dict) plus the pillar envoy:discovery sections a state may override.
_DISC_KEYS = ("root", "install_dir", "config_dir", "manifest_dir", "log_dir", "run_dir", "url", "address",
              "register", "server")


def _disc_opts(kwargs):
    return {k: v for k, v in kwargs.items() if k in _DISC_KEYS}


def _disc_names(entries):
    return sorted(f"{e['service']} {e['ip']}:{e['port']}" for e in entries)


def registered(name, **kwargs):
    """
    This host's services (manifests with an ingress) are registered with the discovery service,
    with the current revision and tags. Registers at once when not; the scheduled
    ``envoy.register`` keeps them alive (heartbeats) afterwards.
    """
    ret = _ret(name)
    opts = _disc_opts(kwargs)
    try:
        status = __salt__["envoy.registration_status"](**opts)
        stale = [e for e in status["services"] if not e["current"]]
        if status["problems"]:
            ret["result"] = False
            ret["comment"] = "manifest problems: " + "; ".join(status["problems"])
            return ret
        if not stale:
            ret["comment"] = (f"registered at {status['url']}: " + ", ".join(_disc_names(status["services"]))
                              if status["services"] else "no manifest with an ingress: nothing to register")
            return ret
        ret["changes"] = {"registered": _disc_names(stale)}
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"would register with {status['url']}: " + ", ".join(_disc_names(stale))
            return ret
        out = __salt__["envoy.register"](**opts)
        ret["comment"] = f"registered with {out['url']}: " + ", ".join(out["registered"])
    except CommandExecutionError as exc:
        ret["changes"] = {}
        ret["result"] = False
        ret["comment"] = str(exc)
    return ret


def deregistered(name, **kwargs):
    """This host's services are not listed by the discovery service (the formula's clean path)."""
    ret = _ret(name)
    opts = _disc_opts(kwargs)
    try:
        status = __salt__["envoy.registration_status"](**opts)
        listed = [e for e in status["services"] if e["listed"]]
        if not listed:
            ret["comment"] = f"not registered at {status['url']}"
            return ret
        ret["changes"] = {"deregistered": _disc_names(listed)}
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"would deregister from {status['url']}: " + ", ".join(_disc_names(listed))
            return ret
        out = __salt__["envoy.deregister"](**opts)
        ret["comment"] = f"deregistered from {out['url']}: " + ", ".join(out["deregistered"])
    except CommandExecutionError as exc:
        ret["changes"] = {}
        ret["result"] = False
        ret["comment"] = str(exc)
    return ret


def discovery_server_running(name, **kwargs):
    """
    The discovery service runs here as a daemon (pidfile in run_dir, log in log_dir) with the
    settings of pillar ``envoy:discovery:server``; other settings restart it.
    """
    ret = _ret(name)
    opts = _disc_opts(kwargs)
    try:
        status = __salt__["envoy.discovery_server_status"](**opts)
        if status["running"] and status["current"]:
            ret["comment"] = f"the discovery service runs (pid {status['pid']})"
            return ret
        action = "restarted" if status["running"] else "started"
        ret["changes"] = {action: " ".join(status["command"])}
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"the discovery service would be {action}"
            return ret
        out = __salt__["envoy.discovery_server_start"](**opts)
        ret["changes"]["pid"] = out["pid"]
        ret["comment"] = f"the discovery service {action} (pid {out['pid']}), healthy"
    except CommandExecutionError as exc:
        ret["result"] = False
        ret["comment"] = str(exc)
    return ret


def discovery_server_dead(name, **kwargs):
    """The discovery service does not run here (hosts pillar no longer names)."""
    ret = _ret(name)
    opts = _disc_opts(kwargs)
    try:
        status = __salt__["envoy.discovery_server_status"](**opts)
        if not status["running"]:
            ret["comment"] = "the discovery service is not running"
            return ret
        ret["changes"] = {"stopped": status["pid"]}
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"the discovery service (pid {status['pid']}) would be stopped"
            return ret
        __salt__["envoy.discovery_server_stop"](**opts)
        ret["comment"] = f"stopped the discovery service (pid {status['pid']})"
    except CommandExecutionError as exc:
        ret["result"] = False
        ret["comment"] = str(exc)
    return ret
