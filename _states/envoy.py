"""
States for Envoy: ``envoy.bundle_installed``, ``envoy.config_managed``, ``envoy.running`` (with
``mod_watch``), ``envoy.dead``, and for discovery ``envoy.registered``, ``envoy.deregistered``,
``envoy.discovery_secret_managed``, ``envoy.discovery_secret_absent``,
``envoy.discovery_server_running``, ``envoy.discovery_server_dead``, and for mesh TLS
``envoy.mesh_ca_trusted``, ``envoy.mesh_secrets_published``, ``envoy.mesh_ca_published`` (beside
Salt's own ``x509`` states, which make the keys and get the certificates signed).

A thin front end over the execution module and the formula's library: every state builds ``ret``,
fills ``changes`` before the test check, returns ``result: None`` under ``test=True``, is
idempotent, and turns errors into ``result: False`` with a readable comment. Secrets never reach
``changes`` or ``comment``. Host settings come from pillar through ``envoy.settings``: the SLS files
pass none.
"""

import functools
import logging

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "envoy"


def __virtual__():
    if "envoy.settings" in __salt__ and "envoy_formula.library" in __utils__:
        return __virtualname__
    return (False, "the envoy execution module or its library is not synced (run saltutil.sync_all)")


def _lib():
    return __utils__["envoy_formula.library"]()


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _failures_as_result(state):
    """A state function whose errors (Salt's or the library's) become ``result: False`` with the
    error as comment and no changes; ``comment_prefix`` may say what was left untouched."""
    @functools.wraps(state)
    def wrapper(name, *args, **kwargs):
        try:
            return state(name, *args, **kwargs)
        except (CommandExecutionError, _lib().errors.EnvoyFormulaError) as exc:
            ret = _ret(name)
            ret.update(result=False, comment=_lib().redaction.hide_private_keys(str(exc)))
            return ret

    return wrapper


def _host():
    return __salt__["envoy.settings"]()


# --- bundles -----------------------------------------------------------------------------------


def _bundle_desc(brief):
    return f"{brief['bundle_id']} (envoy {brief['envoy_version']})" if brief else "none"


@_failures_as_result
def bundle_installed(name, sha256=None, keep=None):
    """
    Make the bundle at ``name`` (salt://, https://, http:// or file://) with archive ``sha256`` the
    current release. Idempotent: when that archive is already current nothing is downloaded.

    .. code-block:: yaml

        envoy-bundle-installed:
          envoy.bundle_installed:
            - name: https://repo.example/envoy-bundle-1.40.0-0123456789ab.tar.gz
            - sha256: <64 hex>
            - keep: 3
    """
    ret = _ret(name)
    plan = __salt__["envoy.bundle_plan"](name, sha256=sha256)
    if plan["action"] == "none":
        ret["comment"] = f"bundle {_bundle_desc(plan['old'])} is already current; nothing downloaded"
        return ret
    if plan["action"] == "switch":
        new = plan["release"]
        predicted = f"switch to installed release {_bundle_desc(new)}"
    else:
        new = f"bundle with sha256 {plan['sha256']}"
        predicted = f"download and install the {new} from {_lib().redaction.url_for_messages(name)}"
    ret["changes"] = {"old": plan["old"], "new": new}
    __context__["envoy.bundle_change"] = True  # the service state restarts onto the new bundle
    if __opts__["test"]:
        ret.update(result=None, comment=f"would {predicted} (current: {_bundle_desc(plan['old'])})")
        return ret
    try:
        done = __salt__["envoy.install_bundle"](name, sha256=sha256, keep=keep)
    except CommandExecutionError as exc:
        ret.update(result=False, changes={}, comment=f"bundle not installed, current left as it was: {exc}")
        return ret
    ret["changes"] = {"old": done["old"], "new": done["new"]} if done["old"] != done["new"] else {}
    if done["pruned"]:
        ret["changes"]["pruned"] = done["pruned"]
    ret["comment"] = done["comment"]
    return ret


# --- config ------------------------------------------------------------------------------------


def config_managed(name):
    """
    This host's Envoy config at ``name`` (``envoy.yaml``), rendered by the current bundle's
    generator from the manifests, pillar ``envoy`` and host facts, validated by the current bundle's
    envoy (every resource inline), and written atomically with the previous version kept for
    rollback. In files mode (``envoy:lookup:config_mode``) routes, clusters and listeners are xDS
    files the running Envoy applies live, each step confirmed through its admin API, and only a
    bootstrap change restarts Envoy; ``changes`` say which resources change and whether a restart
    follows. Any error (bad manifest or pillar, Envoy refuses the config or the update, no bundle)
    gives result False and leaves Envoy serving what it served. Rendering is skipped when the
    generator's inputs are those that rendered the files on disk.

    .. code-block:: yaml

        envoy-config-file-managed:
          envoy.config_managed:
            - name: /etc/envoy/envoy.yaml
            - require:
              - envoy: envoy-bundle-installed
    """
    ret = _ret(name)
    lib = _lib()
    try:
        out = lib.config_apply.converge(_host(), __pillar__.get("envoy") or {},
                                        __grains__.get("id") or __opts__.get("id"), test=__opts__["test"])
        ret.update(result=out["result"], comment=out["comment"], changes=out["changes"])
        # The service state restarts Envoy only when the bootstrap changed (mod_watch reads this).
        __context__["envoy.config_restart"] = out["restart"]
    except (CommandExecutionError, lib.errors.EnvoyFormulaError, OSError) as exc:
        verb = "would not be changed" if __opts__["test"] else "not changed"
        ret.update(result=False, changes={}, comment=f"{name} {verb}: {exc}")
    ret["comment"] = lib.redaction.hide_private_keys(ret["comment"])  # Envoy may echo an inline key
    return ret


# --- running / mod_watch -----------------------------------------------------------------------


@_failures_as_result
def running(name):
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
    status = __salt__["envoy.status"]()
    if status["running"] and status["epoch"] is None and not __opts__["test"]:
        # The restarter runs but no epoch is LIVE (starting, or crash looping): wait and see.
        out = __salt__["envoy.start"]()
        ret.update(result=out["result"], comment=out["comment"])
        return ret
    if status["running"]:
        failed = None if __opts__["test"] else _lib().lifecycle.settle(_host())
        if failed:
            ret.update(result=False, changes={"restart": "hot", "outcome": "failed", "rolled_back": failed["rolled_back"]},
                       comment=f"the queued hot restart failed: {failed['error']}; the previous config was put back "
                               "and the running epoch kept serving")
            return ret
        ret["comment"] = (f"envoy runs under the restarter (pid {status['restarter_pid']}, "
                          f"{status['supervisor']}), epoch {status['epoch']}, {status['state']}")
        if status.get("restart_queued"):
            ret["comment"] += f"; {status['restart_queued']}"
        return ret
    left_over = __salt__["envoy.orphans"]()
    ret["changes"] = {"started": True, "supervisor": status["supervisor"]}
    if left_over:
        ret["changes"]["orphans_stopped"] = left_over
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"envoy would be started ({status['supervisor']})" + (
            f" after stopping orphaned envoy pids {left_over}" if left_over else "")
        return ret
    out = __salt__["envoy.start"]()
    if not out["started"]:  # another run started it while we waited for the lock
        ret.update(changes={}, comment=out["comment"])
        return ret
    ret["changes"].update(restarter_pid=out.get("restarter_pid"), epoch=out.get("epoch"))
    if out["result"]:
        ret["comment"] = f"started envoy under the restarter (pid {out['restarter_pid']}), epoch 0 LIVE"
    else:
        ret["result"] = False
        ret["comment"] = f"started the restarter (pid {out['restarter_pid']}) but envoy is not LIVE: {out['error']}"
    return ret


_RESTART_WORDS = {"start": "start", "hot": "hot restart", "full": "drained full restart"}
_TEST_VERBS = {"start": "be started", "hot": "be hot restarted", "full": "get a drained full restart"}


def mod_watch(name, sfun=None, **kwargs):
    """
    A watched bundle or config changed. Nothing to do when Envoy already runs the current bundle and
    bootstrap (a files-mode change the config state applied live); else a hot restart when the
    current bundle's ``--hot-restart-version`` equals the running Envoy's, a drained full restart
    when it does not, a start when nothing runs. If the new epoch fails, the previous config is put
    back and the result is False with Envoy's error. A lock keeps concurrent runs from overlapping.
    """
    ret = _ret(name)
    if __opts__["test"]:
        return _mod_watch_prediction(ret)
    try:
        out = __salt__["envoy.reload"]()
    except CommandExecutionError as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    if out["kind"] == "none":
        ret["comment"] = out["comment"]
        return ret
    ret["changes"] = {"restart": out["kind"], "epoch": out.get("epoch"),
                      "outcome": out.get("outcome") if out.get("outcome") == "queued" else
                      "success" if out["result"] else "failed"}
    for key in ("duration_s", "steps", "rolled_back"):
        if key in out:
            ret["changes"][key] = out[key]
    kind = _RESTART_WORDS[out["kind"]]
    if out.get("outcome") == "queued":
        ret["comment"] = f"envoy {kind} {out['comment']}"
    elif out["result"]:
        ret["comment"] = f"envoy {kind} done: epoch {out.get('epoch')} LIVE ({out.get('reason')})"
    else:
        ret["result"] = False
        ret["comment"] = f"envoy {kind} failed: {out.get('error')}" + (
            "; the previous config was put back" if out.get("rolled_back") else "")
        if out["kind"] == "hot":
            ret["comment"] += "; the running epoch keeps serving"
    return ret


def _mod_watch_prediction(ret):
    """test=True: what a real run would do, from what the bundle and config states predicted."""
    ret["result"] = None
    if not __context__.get("envoy.bundle_change") and __context__.get("envoy.config_restart") is False:
        ret.update(result=True, comment="envoy would not be restarted: the config change is applied live")
        return ret
    try:
        plan = __salt__["envoy.restart_kind"]()
    except CommandExecutionError as exc:  # e.g. the bundle a real run would install is not there yet
        ret.update(changes={"restart": "unknown"}, comment=f"envoy would be restarted; which kind cannot be told yet: {exc}")
        return ret
    if plan["kind"] == "none":  # the files are not written under test: what runs is still what is on disk
        plan = {"kind": "hot", "reason": "the bundle or the bootstrap changes"}
    ret.update(changes={"restart": plan["kind"]}, comment=f"envoy would {_TEST_VERBS[plan['kind']]}: {plan['reason']}")
    return ret


@_failures_as_result
def dead(name, drain=True):
    """
    Envoy and its supervisor are stopped, and no envoy of this host is left behind: the ``clean``
    side of ``running``. With ``drain`` (the default) a running Envoy first fails its health check
    for ``envoy:restart:full_restart_drain_s`` seconds, so load balancers and the Envoys that
    health-check it stop sending before it goes: leaving the fleet loses no request.

    .. code-block:: yaml

        envoy-service-clean-dead:
          envoy.dead:
            - drain: true
    """
    ret = _ret(name)
    status = __salt__["envoy.status"]()
    left_over = __salt__["envoy.orphans"]() if not status["running"] else []
    if not status["running"] and not left_over:
        ret["comment"] = "envoy is not running"
        return ret
    ret["changes"] = {"stopped": True, "restarter_pid": status["restarter_pid"]}
    if left_over:
        ret["changes"]["orphans_stopped"] = left_over
    draining = drain and status["running"]
    drain_s = __salt__["envoy.settings"]()["restart"]["full_restart_drain_s"] if draining else 0
    if __opts__["test"]:
        how = (f"fail its health check, drain for {drain_s:g}s (envoy:restart:full_restart_drain_s), then stop"
               if draining else "be stopped")
        ret.update(result=None, comment=f"envoy would {how}")
        return ret
    out = __salt__["envoy.stop"](drain=draining)
    ret["changes"]["orphans_stopped"] = out.get("orphans_stopped") or []
    steps = [step for step in out.get("steps", []) if step != "stopped"]
    ret["comment"] = "envoy stopped" + (f" after draining: {', '.join(steps)}" if steps else "")
    return ret


# --- mesh TLS --------------------------------------------------------------------------------------


@_failures_as_result
def mesh_ca_trusted(name):
    """
    The mesh CA certificate at ``name`` (``<pki_dir>/mesh-ca.crt``) is the one the CA minion
    (pillar ``envoy:mesh_tls:ca:minion``) publishes in the Salt mine, written atomically (0644).
    Envoy trusts it once ``envoy.mesh_secrets_published`` has run.

    .. code-block:: yaml

        envoy-identity-ca-trusted:
          envoy.mesh_ca_trusted:
            - name: /etc/envoy/pki/mesh-ca.crt
    """
    ret = _ret(name)
    lib = _lib()
    ca_minion = _host()["mesh_tls"]["ca"]["minion"]
    pem = lib.mesh_identity.ca_from_mine(__salt__["mine.get"](ca_minion, lib.mesh_identity.MINE_FUNCTION), ca_minion)
    new = lib.mesh_identity.certificate_words(lib.mesh_identity.read_certificate_text(pem))
    current = lib.atomic_files.read_text(name)
    if current == pem:
        ret["comment"] = f"the mesh CA of {ca_minion} is trusted ({new})"
        return ret
    old = None
    if current is not None:
        try:
            old = lib.mesh_identity.certificate_words(lib.mesh_identity.read_certificate_text(current))
        except ValueError:
            old = "not a certificate"
    ret["changes"] = {"old": old, "new": f"{new}, from {ca_minion}"}
    if __opts__["test"]:
        ret.update(result=None, comment=f"the mesh CA of {ca_minion} would be trusted ({new})")
        return ret
    lib.atomic_files.write(name, pem, mode=0o644)
    ret["comment"] = f"the mesh CA of {ca_minion} is trusted ({new})"
    return ret


@_failures_as_result
def mesh_secrets_published(name):
    """
    Envoy reads this host's keys, certificates and the mesh CA through SDS files in ``name``
    (``<pki_dir>/sds``), the only directory it watches. Each file's version is a digest of the
    certificate it names: after the x509 states renewed one, its file is renamed into place, and
    Envoy re-reads the pair without a restart. Then, where Envoy already presents that identity,
    the state waits until ``/certs`` shows the new serial, and fails if it does not.

    .. code-block:: yaml

        envoy-identity-secrets-published:
          envoy.mesh_secrets_published:
            - name: /etc/envoy/pki/sds
    """
    ret = _ret(name)
    lib = _lib()
    host = _host()
    absent = lib.mesh_identity.missing(host)
    if absent and __opts__["test"]:  # the x509 states only said they would write them
        ret["changes"] = {"published": "the SDS files of the keys and certificates the x509 states would write"}
        ret.update(result=None, comment="would publish once these exist: " + ", ".join(absent))
        return ret
    changed = lib.mesh_identity.stale(host)
    if not changed:
        ret["comment"] = "Envoy's SDS files name the keys and certificates on disk"
        return ret
    ret["changes"] = {"published": changed}
    names = ", ".join(sorted(changed))
    if __opts__["test"]:
        ret.update(result=None, comment=f"would publish {names}: Envoy re-reads them without a restart")
        return ret
    written = lib.mesh_identity.publish(host)
    ret["changes"] = {"published": written}
    problems = lib.mesh_identity.confirm_served(host, written)
    if problems:
        ret.update(result=False, comment=f"published {names}, but " + "; ".join(problems))
    else:
        ret["comment"] = f"published {names}: Envoy re-reads them without a restart"
    return ret


@_failures_as_result
def mesh_ca_published(name):
    """
    On the CA minion: its certificate (``name``) is in the Salt mine as ``envoy_mesh_ca``, where
    every host's ``envoy.mesh_ca_trusted`` takes it from. Sent again whenever the mine's copy
    differs (a new CA, or a master whose mine was flushed).

    .. code-block:: yaml

        envoy-identity-ca-published:
          envoy.mesh_ca_published:
            - name: /etc/envoy/pki/ca/mesh-ca.crt
    """
    ret = _ret(name)
    lib = _lib()
    pem = lib.mesh_identity.ca_certificate(_host())
    me = __grains__["id"]
    function = lib.mesh_identity.MINE_FUNCTION
    if (__salt__["mine.get"](me, function) or {}).get(me) == pem:
        ret["comment"] = f"the mesh CA certificate is in the mine as {function}"
        return ret
    ret["changes"] = {"mine": function}
    if __opts__["test"]:
        ret.update(result=None, comment=f"the mesh CA certificate would be sent to the mine as {function}")
        return ret
    if not __salt__["mine.send"](function, mine_function="envoy.mesh_ca_certificate"):
        ret.update(result=False, changes={}, comment=f"mine.send {function} failed: is the master reachable?")
        return ret
    ret["comment"] = f"sent the mesh CA certificate to the mine as {function}"
    return ret


# --- discovery -----------------------------------------------------------------------------------


def _names(entries):
    return sorted(f"{e['service']} {e['ip']}:{e['port']}" for e in entries)


@_failures_as_result
def registered(name):
    """
    This host's services (manifests with an ingress) are registered with the discovery service, with
    the current revision and tags. Registers at once when not; the scheduled ``envoy.register`` keeps
    them alive (heartbeats) afterwards.
    """
    ret = _ret(name)
    status = __salt__["envoy.registration_status"]()
    stale = [e for e in status["services"] if not e["current"]]
    if status["problems"]:
        ret.update(result=False, comment="manifest problems: " + "; ".join(status["problems"]))
        return ret
    if not stale:
        ret["comment"] = (f"registered at {status['url']}: " + ", ".join(_names(status["services"]))
                          if status["services"] else "no manifest with an ingress: nothing to register")
        return ret
    ret["changes"] = {"registered": _names(stale)}
    if __opts__["test"]:
        ret.update(result=None, comment=f"would register with {status['url']}: " + ", ".join(_names(stale)))
        return ret
    out = __salt__["envoy.register"]()
    ret["comment"] = f"registered with {out['url']}: " + ", ".join(out["registered"])
    return ret


@_failures_as_result
def deregistered(name):
    """This host's services are not listed by the discovery service (the formula's clean path)."""
    ret = _ret(name)
    status = __salt__["envoy.registration_status"]()
    listed = [e for e in status["services"] if e["listed"]]
    if not listed:
        ret["comment"] = f"not registered at {status['url']}"
        return ret
    ret["changes"] = {"deregistered": _names(listed)}
    if __opts__["test"]:
        ret.update(result=None, comment=f"would deregister from {status['url']}: " + ", ".join(_names(listed)))
        return ret
    out = __salt__["envoy.deregister"]()
    ret["comment"] = f"deregistered from {out['url']}: " + ", ".join(out["deregistered"])
    return ret


@_failures_as_result
def discovery_secret_managed(name, kind, required=False):
    """
    A secret of authenticated registration in its 0600 file, as pillar has it: ``kind: token``
    (this host's registration token) or ``kind: keys`` (a discovery server's token keys), both
    issued by the master's ``envoy_discovery`` ext_pillar. The value never appears in the state's
    arguments, changes, comment or the minion's log. Without a value in pillar the file is left as
    it is (one failed issue must not wipe a fleet's proofs); ``required``: that is a failure.
    """
    ret = _ret(name)
    status = __salt__["envoy.discovery_secret_status"](kind)
    what = {"token": "the registration token", "keys": "the token keys"}[kind]
    if not status["in_pillar"]:
        if required and not status["present"]:
            ret.update(result=False, comment=f"{what} is needed (envoy:discovery:auth:mode is not off), but pillar "
                                             f"has none and {status['path']} does not exist: configure the master's "
                                             "envoy_discovery ext_pillar (docs/discovery.md, Who may register what)")
        else:
            ret["comment"] = f"pillar holds no value for {what}: {status['path']} left as it is"
        return ret
    if status["current"]:
        ret["comment"] = f"{what} in {status['path']} is current"
        return ret
    ret["changes"] = {"written": status["path"]}  # where, never what
    if __opts__["test"]:
        ret.update(result=None, comment=f"{what} would be written to {status['path']} (0600)")
        return ret
    __salt__["envoy.discovery_secret_write"](kind)
    ret["comment"] = f"{what} written to {status['path']} (0600)"
    return ret


@_failures_as_result
def discovery_secret_absent(name, kind):
    """No registration token (``kind: token``) or token keys (``kind: keys``) file: the clean path."""
    ret = _ret(name)
    status = __salt__["envoy.discovery_secret_status"](kind)
    if not status["present"]:
        ret["comment"] = f"{status['path']} is absent"
        return ret
    ret["changes"] = {"removed": status["path"]}
    if __opts__["test"]:
        ret.update(result=None, comment=f"{status['path']} would be removed")
        return ret
    __salt__["envoy.discovery_secret_remove"](kind)
    ret["comment"] = f"removed {status['path']}"
    return ret


@_failures_as_result
def discovery_server_running(name):
    """
    The discovery service runs here as a daemon (pidfile in run_dir, log in log_dir) with the
    settings of pillar ``envoy:discovery:server``; other settings restart it.
    """
    ret = _ret(name)
    status = __salt__["envoy.discovery_server_status"]()
    if status["running"] and status["current"]:
        ret["comment"] = f"the discovery service runs (pid {status['pid']})"
        return ret
    action = "restarted" if status["running"] else "started"
    ret["changes"] = {action: " ".join(status["command"])}
    if __opts__["test"]:
        ret.update(result=None, comment=f"the discovery service would be {action}")
        return ret
    out = __salt__["envoy.discovery_server_start"]()
    ret["changes"]["pid"] = out["pid"]
    ret["comment"] = f"the discovery service {action} (pid {out['pid']}), healthy"
    return ret


@_failures_as_result
def discovery_server_dead(name):
    """The discovery service does not run here (hosts pillar no longer names)."""
    ret = _ret(name)
    status = __salt__["envoy.discovery_server_status"]()
    if not status["running"]:
        ret["comment"] = "the discovery service is not running"
        return ret
    ret["changes"] = {"stopped": status["pid"]}
    if __opts__["test"]:
        ret.update(result=None, comment=f"the discovery service (pid {status['pid']}) would be stopped")
        return ret
    __salt__["envoy.discovery_server_stop"]()
    ret["comment"] = f"stopped the discovery service (pid {status['pid']})"
    return ret
