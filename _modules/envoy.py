"""
Execution module ``envoy``: install Envoy bundles, render and validate this host's config, and
operate the running Envoy (status, hot restart, drain, health check, stats, discovery).

A thin front end: each function resolves this host's settings (``envoy.settings``: pillar
``envoy:lookup`` and the other ``envoy:`` sections over the formula's defaults) and calls the
formula's library (``_utils/envoy_formula``, synced with the other custom modules), turning its
errors into ``CommandExecutionError``. Keyword arguments named like ``envoy:lookup`` keys
(``root``, ``admin_port``, ...) override them for one call.
"""

import functools
import logging

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "envoy"
__outputter__ = {"scheduled_highstate": "highstate"}


def __virtual__():
    if "envoy_formula.library" in __utils__:
        return __virtualname__
    return (False, "the envoy_formula library (_utils/envoy_formula) is not synced: run saltutil.sync_all")


def _lib():
    return __utils__["envoy_formula.library"]()


def _salt_errors(func):
    """The library's errors as Salt's, with their structured detail."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except _lib().errors.EnvoyFormulaError as exc:
            raise CommandExecutionError(str(exc), info=exc.info) from exc

    return wrapper


def _overrides(kwargs):
    """Host setting overrides from a call's kwargs (Salt's own ``__pub_*`` keys dropped)."""
    return {k: v for k, v in kwargs.items() if not k.startswith("__")}


def _host(kwargs, pillar=None):
    """This host's settings from the minion's pillar, or from ``pillar`` when given; ``envoy:lookup``
    in the minion's own config wins over pillar's either way (as config.get has it)."""
    if pillar is None:
        envoy, lookup = __pillar__.get("envoy") or {}, __salt__["config.get"]("envoy:lookup", {})
    else:
        envoy, lookup = pillar.get("envoy") or {}, (__opts__.get("envoy") or {}).get("lookup")
    return _lib().host_settings.resolve(envoy, lookup=lookup or None, grains=__grains__,
                                        overrides=_overrides(kwargs))


def _next_highstate_pillar():
    """Pillar as the next highstate will compile it (asked of the master afresh), not the copy this
    minion holds in memory: judging a pillar edit must not answer about the previous pillar."""
    try:
        return __salt__["pillar.items"](unmask=True)  # Salt 3008 masks pillar values unless asked
    except TypeError:  # Salt before 3008: no masking, no such argument
        return __salt__["pillar.items"]()


def _node_id():
    return __grains__.get("id") or __opts__.get("id") or "envoy"


@_salt_errors
def settings(**kwargs):
    """
    Every setting of this host, resolved once for the whole formula (``map.jinja`` uses it):
    paths with the sandbox ``root`` applied, user, admin port, base id, the effective supervisor,
    and the ``schedule``, ``restart``, ``discovery`` and ``bundle`` sections.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.settings
    """
    return _host(kwargs)


# --- bundles ---------------------------------------------------------------------------------


@_salt_errors
def bundles(**kwargs):
    """
    The installed bundle releases, most recently activated first: id, envoy version, archive
    sha256, install/activation times and whether it is ``current``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.bundles
    """
    return _lib().bundle_releases.installed(_host(kwargs))


@_salt_errors
def current_bundle(**kwargs):
    """
    The ``bundle.json`` of the current release, or None when no bundle is installed.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.current_bundle
    """
    return _lib().bundle_releases.current_manifest(_host(kwargs))


@_salt_errors
def bundle_plan(source, sha256=None, **kwargs):
    """
    What ``install_bundle`` would do, decided without downloading anything: ``action`` is ``none``
    (this archive is current), ``switch`` (an installed release came from it) or ``download``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.bundle_plan https://repo/envoy-bundle-1.40.0-abc.tar.gz sha256=<hex>
    """
    return _lib().bundle_releases.plan(_host(kwargs), source, sha256)


@_salt_errors
def install_bundle(source, sha256=None, keep=None, limits=None, **kwargs):
    """
    Install the bundle at ``source`` (salt://, https://, http:// or file://) whose archive has
    ``sha256`` (required), make it ``current`` and keep the ``keep`` newest releases (default:
    ``keep_releases``; the current and the previous one are never removed). Downloads nothing when
    that archive is already current. Returns ``{changed, downloaded, old, new, pruned, comment}``;
    on any failure ``current`` stays as it was.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.install_bundle salt://bundles/envoy-bundle-1.40.0-abc.tar.gz sha256=<hex>
    """
    return _lib().bundle_releases.install(
        _host(kwargs), source, sha256, keep=keep, limits=limits,
        cache_salt_file=lambda url: __salt__["cp.cache_file"](url), salt_cache_dir=__opts__.get("cachedir"))


# --- config ----------------------------------------------------------------------------------


@_salt_errors
def redact(text):
    """
    ``text`` with every PEM private key replaced by ``<redacted private key sha256:...>``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.redact "$(cat envoy.yaml)"
    """
    return _lib().redaction.hide_private_keys(text)


@_salt_errors
def render(redact=True, files=False, **kwargs):
    """
    This host's Envoy config, rendered by the current bundle's generator from the manifests in
    ``manifest_dir``, pillar ``envoy`` (compiled afresh, as the next highstate will see it) and the
    host facts: the effective config, every listener, cluster and route inline; with ``files=True``
    every file the config mode writes ({path relative to the config dir: text}). Private keys are
    redacted unless ``redact=False``. Bad input raises an error naming the file and field.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.render
        salt-call envoy.render redact=False --out txt
        salt-call envoy.render files=True
    """
    lib = _lib()
    pillar = _next_highstate_pillar()
    host = _host(kwargs, pillar)
    show = lib.redaction.hide_private_keys if redact else (lambda text: text)
    if files:
        mode = lib.config_apply.resolve_mode(host)
        out = lib.config_render.render_outputs(host, pillar.get("envoy") or {}, _node_id(), mode)
        return {rel: show(text) for rel, text in sorted(out["files"].items())}
    return show(lib.config_render.render(host, pillar.get("envoy") or {}, _node_id()))


@_salt_errors
def validate(path=None, **kwargs):
    """
    Check a config with the current bundle's ``envoy --mode validate`` (as the envoy user when run
    as root). Without ``path``: this host's config rendered afresh from its manifests and the pillar
    the next highstate will use (compiled afresh, not the minion's in-memory copy). Returns ``ok``
    and Envoy's own error text (private keys redacted).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.validate
        salt-call envoy.validate path=/etc/envoy/envoy.yaml
    """
    lib = _lib()
    if path is not None:
        import os

        if not os.path.isfile(path):
            raise CommandExecutionError(f"{path}: no such file")
        return lib.config_validate.validate_file(_host(kwargs), path)
    pillar = _next_highstate_pillar()
    host = _host(kwargs, pillar)
    text = lib.config_render.render(host, pillar.get("envoy") or {}, _node_id())
    return lib.config_validate.validate_text(host, text)


@_salt_errors
def clear_rejected(**kwargs):
    """
    Forget the inputs Envoy refused (a files-mode update it rejected, or a config whose new epoch
    failed), so the next highstate tries them again instead of failing fast with the recorded
    reason. Returns whether there was a record.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.clear_rejected
    """
    return _lib().rejected_inputs.clear(_host(kwargs))


@_salt_errors
def rollback_config(**kwargs):
    """
    Put ``envoy.yaml.prev`` back as ``envoy.yaml`` (atomically; the running Envoy is not touched).
    Returns False when there is no previous config.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.rollback_config
    """
    return _lib().config_file.rollback(_host(kwargs)["config_file"])


# --- mesh TLS ----------------------------------------------------------------------------------


@_salt_errors
def mesh_identities(**kwargs):
    """
    The mesh identities this host holds (pillar ``envoy:mesh_tls``, docs/mesh-tls.md): ``edge``
    with the front role and each service of its manifests, with their SPIFFE id, key, certificate
    and SDS file, and the signing policy their certificates are requested under. Empty when mesh
    TLS is off. The ``envoy.identity`` SLS issues one key and certificate per entry.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.mesh_identities
    """
    return _lib().mesh_identity.identities(_host(kwargs))


@_salt_errors
def mesh_ca_certificate(**kwargs):
    """
    On the CA minion: the mesh CA's certificate (PEM), what ``envoy.identity.ca`` publishes in the
    Salt mine as ``envoy_mesh_ca`` for every host to trust.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.mesh_ca_certificate
    """
    return _lib().mesh_identity.ca_certificate(_host(kwargs))


@_salt_errors
def mesh_certificates(**kwargs):
    """
    Each identity's certificate: expiry (ISO 8601 UTC), URI, serial and whether Envoy serves it,
    the CA's expiry, and ``earliest_expiry`` of them all (``envoy.status`` shows the same). The
    identities are pillar's and those Envoy's SDS files name (what the last highstate published,
    even when this minion's in-memory pillar predates it). None when mesh TLS is off and no SDS
    file is left.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.mesh_certificates
    """
    host = _host(kwargs)
    return _lib().mesh_identity.certificates(host)


@_salt_errors
def mesh_publish(**kwargs):
    """
    Point Envoy at the keys and certificates on disk now (what ``envoy.mesh_secrets_published``
    does after the x509 states): rename the changed SDS files into ``<pki_dir>/sds``, then wait
    until Envoy serves each new certificate. Returns the secrets published and any problem.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.mesh_publish
    """
    host = _host(kwargs, _next_highstate_pillar())  # the minion's in-memory pillar may predate the last highstate
    lib = _lib().mesh_identity
    written = lib.publish(host)
    return {"published": written, "problems": lib.confirm_served(host, written)}


# --- the running Envoy -----------------------------------------------------------------------


@_salt_errors
def supervisor(**kwargs):
    """
    ``systemd`` or ``daemon``: ``auto`` is systemd when the init grain says systemd, the host is not
    a sandbox (no ``root``), we are root and /etc/systemd/system is writable.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.supervisor
    """
    return _host(kwargs)["supervisor"]


@_salt_errors
def restarter_command(**kwargs):
    """
    The restarter's command line for this host (the systemd unit's ExecStart uses it too).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.restarter_command
    """
    return _lib().supervisor.restarter_command(_host(kwargs))


@_salt_errors
def status(**kwargs):
    """
    What runs, starting with a one-line ``summary`` (LIVE or not, epoch, bundle, whether the config
    on disk is the one running, the last restart, the last scheduled highstate's outcome), then the
    details: supervisor, restarter pid, epochs, envoy and bundle versions, config hashes, uptime,
    the last restart and the last scheduled highstate (failed states first). Times are ISO 8601 UTC.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.status
    """
    return _lib().status_report.status(_host(kwargs))


def summary(**kwargs):
    """
    The first line of ``envoy.status``, alone: what an operator scans across a fleet.

    CLI Example:

    .. code-block:: bash

        salt '*' envoy.summary
    """
    return status(**kwargs)["summary"]


@_salt_errors
def report_summary(**kwargs):
    """
    This host's entry in the fleet report: the gist of ``envoy.status``, its manifests, drift (the
    config on disk against what its manifests and this minion's pillar render), its registrations
    in discovery, requests through its listeners since the previous call, and its Prometheus
    scrape address. ``envoy.report`` (salt/envoy/report) publishes it to the Salt mine on an
    interval; ``salt-run envoy.report live=True`` asks for it directly.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.report_summary
        salt-call mine.send envoy.report mine_function=envoy.report_summary
    """
    return _lib().report_summary.collect(_host(kwargs), __pillar__.get("envoy") or {}, _node_id(), __grains__)


def scheduled_highstate(**kwargs):
    """
    Run ``state.highstate`` and record its outcome (when, success, the failed states) for
    ``envoy.status``: what the formula's pull-based schedule runs (Salt's scheduler, cron or the
    systemd timer), so an operator sees convergence failing even while Envoy stays LIVE on its last
    good config. Returns the highstate's own return; keyword arguments go to ``state.highstate``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.scheduled_highstate
    """
    import time

    started = time.time()
    ret = __salt__["state.highstate"](**_overrides(kwargs))
    try:
        _lib().highstate_record.record(_host({}), ret, started)
    except (OSError, _lib().errors.EnvoyFormulaError) as exc:  # the run happened: never fail it here
        log.warning("could not record the highstate's outcome: %s", exc)
    return ret


@_salt_errors
def orphans(**kwargs):
    """
    Envoy epochs of this host that no restarter supervises (pids); ``envoy.start`` stops them.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.orphans
    """
    return _lib().supervisor.orphans(_host(kwargs))


@_salt_errors
def start(wait=True, **kwargs):
    """
    Start the supervisor (systemd unit or detached restarter) unless it runs; envoy epochs left
    behind by a killed restarter are stopped first. With ``wait``, returns once epoch 0 is LIVE or
    has failed. ``started`` says whether this call started it.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.start
    """
    return _lib().lifecycle.start(_host(kwargs), wait=wait)


@_salt_errors
def stop(drain=False, **kwargs):
    """
    Stop the supervisor and every envoy epoch (SIGTERM, SIGKILL after the stop timeout). With
    ``drain=True``, first fail the health check and wait ``envoy:restart:full_restart_drain_s``
    (default: the drain time), so whatever health-checks this host stops sending to it: leaving the
    fleet loses no request. The result's ``steps`` say what was done.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.stop
        salt-call envoy.stop drain=True
    """
    host = _host(kwargs)
    return _lib().lifecycle.drain_then_stop(host) if drain else _lib().lifecycle.stop(host)


@_salt_errors
def hot_restart(**kwargs):
    """
    SIGHUP the restarter and wait until the new epoch is LIVE or its failure is recorded. The old
    epoch keeps serving when the new one fails.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.hot_restart
    """
    return _lib().lifecycle.hot_restart(_host(kwargs))


@_salt_errors
def full_restart(**kwargs):
    """
    A drained full restart: ``/healthcheck/fail``, wait out the drain window, stop, start at epoch 0,
    ``/healthcheck/ok``. For a binary whose hot restart version differs from the running one.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.full_restart
    """
    return _lib().lifecycle.full_restart(_host(kwargs))


@_salt_errors
def restart_kind(**kwargs):
    """
    Which restart applying the current bundle and config needs: ``start`` (nothing runs), ``hot``
    (same hot restart version) or ``full`` (another version, or hot restart blocked), with the reason.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.restart_kind
    """
    return _lib().lifecycle.restart_kind(_host(kwargs))


@_salt_errors
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
    return _lib().lifecycle.reload(_host(kwargs), since=since, rollback=rollback)


def _admin(kwargs):
    return _lib().admin_api.Admin(_host(kwargs)["admin_port"])


@_salt_errors
def stats(filter=None, prefix=None, **kwargs):
    """
    Envoy counters and gauges as {name: value}, filtered by a regex (``filter``) or a ``prefix``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.stats prefix=listener.
    """
    import re

    regex = filter or (f"^{re.escape(prefix)}" if prefix else None)
    return _admin(kwargs).stats(regex)


@_salt_errors
def drain(graceful=True, inbound_only=False, **kwargs):
    """
    Drain the listeners (``POST /drain_listeners``): Envoy stops accepting and closes connections.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.drain
    """
    query = "&".join(q for q, on in (("graceful", graceful), ("inboundonly", inbound_only)) if on)
    return _admin(kwargs).post("/drain_listeners" + (f"?{query}" if query else ""))


@_salt_errors
def healthcheck_fail(**kwargs):
    """
    Make the health_check filter answer 503 so load balancers and discovery drain this host.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.healthcheck_fail
    """
    return _admin(kwargs).post("/healthcheck/fail")


@_salt_errors
def healthcheck_ok(**kwargs):
    """
    Undo ``healthcheck_fail``.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.healthcheck_ok
    """
    return _admin(kwargs).post("/healthcheck/ok")


@_salt_errors
def reopen_logs(**kwargs):
    """
    Reopen Envoy's access logs (after rotation).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.reopen_logs
    """
    return _admin(kwargs).post("/reopen_logs")


# --- discovery -------------------------------------------------------------------------------


@_salt_errors
def registrations(**kwargs):
    """
    What ``envoy.register`` would send: one registration per manifest with an ingress.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.registrations
    """
    entries, problems = _lib().discovery_registration.plan(_host(kwargs), __grains__)
    return {"registrations": entries, "problems": problems}


@_salt_errors
def register(**kwargs):
    """
    Register (or heartbeat) every service this host serves with the discovery service:
    ``POST <url>/v1/registration/<service>`` with this host's ip, the ingress port, and tags
    az/region/instance_id (pillar ``envoy:discovery:register:tags``, else grains). Raises when any
    registration failed, after trying all of them.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.register
    """
    return _lib().discovery_registration.register(_host(kwargs), __grains__)


@_salt_errors
def deregister(**kwargs):
    """
    Remove this host's services from the discovery service (``DELETE .../<ip>:<port>``); a host
    already gone counts as done. Used when the formula is cleaned or the host retires.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.deregister
    """
    return _lib().discovery_registration.deregister(_host(kwargs), __grains__)


@_salt_errors
def registration_status(**kwargs):
    """
    For each service this host serves: is it listed by the discovery service with this host's
    ip:port, and with the same revision and tags (``current``)?

    CLI Example:

    .. code-block:: bash

        salt-call envoy.registration_status
    """
    return _lib().discovery_registration.status(_host(kwargs), __grains__)


def _pillar_envoy():
    """Pillar ``envoy`` as plain data (Salt 3008 wraps pillar to mask it in output; values read the same)."""
    return __pillar__.get("envoy") or {}


@_salt_errors
def discovery_secret_status(kind, **kwargs):
    """
    Whether this host's registration token (``kind=token``) or, on a discovery server, the token
    keys (``kind=keys``) are in their 0600 file as pillar has them (the master's ``envoy_discovery``
    ext_pillar issues both). Says where and whether, never what.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_secret_status token
    """
    return _lib().discovery_credentials.status(_host(kwargs), _pillar_envoy(), kind)


@_salt_errors
def discovery_secret_write(kind, **kwargs):
    """
    Write this host's registration token (``kind=token``) or the discovery server's token keys
    (``kind=keys``) from pillar to its 0600 file, atomically. Returns what
    ``envoy.discovery_secret_status`` does.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_secret_write token
    """
    return _lib().discovery_credentials.write(_host(kwargs), _pillar_envoy(), kind)


@_salt_errors
def discovery_secret_remove(kind, **kwargs):
    """
    Remove this host's registration token (``kind=token``) or the token keys (``kind=keys``) file
    (the clean path). True when there was one.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_secret_remove token
    """
    return _lib().discovery_credentials.remove(_host(kwargs), kind)


@_salt_errors
def discovery_server_command(**kwargs):
    """
    The argv the discovery daemon runs with (from ``envoy:discovery:server``).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_command
    """
    return _lib().discovery_daemon.command(_host(kwargs))


@_salt_errors
def discovery_server_status(**kwargs):
    """
    Whether the discovery daemon runs here, its pid, and whether it runs the configured argv.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_status
    """
    return _lib().discovery_daemon.status(_host(kwargs))


@_salt_errors
def discovery_server_start(timeout=20, **kwargs):
    """
    Start the discovery daemon (detached, its own session, output to its log file) and wait until
    its /healthcheck answers. Restarts it when it runs with other settings.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_start
    """
    return _lib().discovery_daemon.start(_host(kwargs), timeout=timeout)


@_salt_errors
def discovery_server_stop(timeout=10, **kwargs):
    """
    Stop the discovery daemon (TERM, then KILL after ``timeout`` seconds).

    CLI Example:

    .. code-block:: bash

        salt-call envoy.discovery_server_stop
    """
    return _lib().discovery_daemon.stop(_host(kwargs), timeout=timeout)
