"""
The discovery HTTP service on aiohttp:

    envoy-discovery --listen 127.0.0.1:8080 [--redis URL | --sqlite PATH] [--ttl 600] [--workers N]

Lyft's registration API v1 (``/v1/registration/<service>``), Envoy's v3 REST EDS
(``POST /v3/discovery:endpoints``), ``/healthcheck`` and Prometheus ``/metrics``.
"""

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from aiohttp import web
from aiohttp.web_runner import GracefulExit
from envoy_formula.discovery_tokens import KeysError

from discovery import eds
from discovery.auth import MODES as AUTH_MODES
from discovery.auth import Authenticator
from discovery.metrics import Metrics, shared_block
from discovery.model import (
    InvalidRegistration,
    parse_endpoint,
    parse_registration,
    validate_ip,
    validate_service,
)
from discovery.store import SqliteStore, StoreError, open_store
from discovery.views import SweepGuard, Views

log = logging.getLogger("discovery")

DEFAULT_TTL = 600.0
# Envoy's DiscoveryRequest carries its whole node (every extension it was built with): ~80 KiB.
MAX_BODY = 1024 * 1024
MAX_REGISTRATION_BODY = 16 * 1024  # a registration is a few hundred bytes
DEFAULT_CHECK_INTERVAL = 0.25
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STORE, TTL, ENV, METRICS = web.AppKey("store", object), web.AppKey("ttl", float), \
    web.AppKey("env", str), web.AppKey("metrics", Metrics)
VIEWS, OPTIONS, HELD = web.AppKey("views", Views), web.AppKey("options", object), web.AppKey("held", dict)
AUTH = web.AppKey("auth", Authenticator)
REFUSED = {"register": "registration refused", "deregister": "deregistration refused",
           "operator": "operator action refused"}


def json_response(payload, status=200):
    return web.json_response(payload, status=status, dumps=lambda o: json.dumps(o, separators=(",", ":")))


def error(status, message, **extra):
    return json_response({"error": message, **extra}, status=status)


def forbidden(operation, failure):
    """403 with what was wrong (never the token itself)."""
    return error(403, f"{REFUSED[operation]}: {failure}", reason=failure.reason)


def live_since(app):
    return time.time() - app[TTL]


def host_view(host):
    """A host as Lyft's GET answered it (last_check_in as an ISO 8601 UTC string)."""
    checked = datetime.fromtimestamp(host.last_check_in, tz=timezone.utc)
    return {"service": host.service, "ip_address": host.ip_address, "port": host.port,
            "revision": host.revision, "service_repo_name": host.service_repo_name,
            "last_check_in": checked.isoformat(timespec="milliseconds"), "tags": host.tags}


@web.middleware
async def store_errors(request, handler):
    """A failing store answers 503 (Envoy keeps its last endpoints) and is counted, never hidden."""
    try:
        return await handler(request)
    except StoreError as exc:
        operation = request.match_info.route.name or "other"
        request.app[METRICS].inc("discovery_errors_total", operation=operation)
        log.error("store failed during %s %s: %s", request.method, request.path, exc)
        return error(503, f"store unavailable: {exc}")


async def register(request):
    metrics = request.app[METRICS]
    try:
        if (request.content_length or 0) > MAX_REGISTRATION_BODY:
            raise ValueError(f"larger than {MAX_REGISTRATION_BODY} bytes")
        form = await request.post()
        host = parse_registration(request.match_info["service"], form, time.time())
    except InvalidRegistration as exc:
        metrics.inc("discovery_registrations_total", result="rejected")
        return error(400, str(exc), field=exc.field)
    except (ValueError, web.HTTPException) as exc:  # undecodable or oversized body
        metrics.inc("discovery_registrations_total", result="rejected")
        return error(400, f"body: not a registration form ({exc})", field="body")
    failure = request.app[AUTH].refusal(request, "register", host.service, host.ip_address)
    if failure:
        metrics.inc("discovery_registrations_total", result="forbidden")
        return forbidden("register", failure)
    if await request.app[STORE].register(host, since=live_since(request.app)):
        request.app[VIEWS].invalidate(host.service)
    metrics.inc("discovery_registrations_total", result="ok")
    return json_response(host_view(host))


async def list_hosts(request):
    try:
        service = validate_service(request.match_info["service"])
    except InvalidRegistration as exc:
        return error(400, str(exc), field=exc.field)
    hosts = await request.app[VIEWS].listed(service)
    return json_response({"env": request.app[ENV], "service": service, "hosts": [host_view(h) for h in hosts]})


async def deregister(request):
    try:
        service = validate_service(request.match_info["service"])
        ip, port = parse_endpoint(request.match_info["endpoint"])
    except InvalidRegistration as exc:
        return error(400, str(exc), field=exc.field)
    failure = request.app[AUTH].refusal(request, "deregister", service, ip)
    if failure:
        return forbidden("deregister", failure)
    deleted = await request.app[STORE].deregister(service, ip, port)
    request.app[METRICS].inc("discovery_deregistrations_total", deleted)
    if not deleted:
        return error(404, f"{service}: no host {request.match_info['endpoint']}")
    request.app[VIEWS].invalidate(service)
    return json_response({"service": service, "deleted": deleted})


async def endpoints(request):
    """v3 REST EDS. The answer is assembled from per-service views cached with their serialised
    ClusterLoadAssignment and version; a request whose ``version_info`` is the current version gets
    304 Not Modified (Envoy's REST fetcher keeps its config and waits for the next poll)."""
    app = request.app
    metrics, views = app[METRICS], app[VIEWS]
    try:
        seen, clusters, _ = eds.parse_request(await request.read())
    except ValueError as exc:
        metrics.inc("discovery_eds_requests_total", result="rejected")
        return error(400, f"DiscoveryRequest: {exc}")
    if not clusters:  # a wildcard request: every service with something to show
        guard = app[OPTIONS].guard
        stats = await app[STORE].host_stats(live_since(app))
        clusters = sorted(s for s, (total, expired) in stats.items()
                          if total > expired or guard.holds(total, expired, views.fleet_held))
    answer = [await views.get(name) for name in clusters]
    version = eds.combined_version(answer)
    if seen == version and app[OPTIONS].not_modified:
        metrics.inc("discovery_eds_requests_total", result="not_modified")
        return web.Response(status=304)
    metrics.inc("discovery_eds_requests_total", result="ok")
    return web.Response(body=eds.response_body(version, answer), content_type="application/json")


async def healthcheck(request):
    try:
        await request.app[STORE].ping()
    except StoreError as exc:
        return web.Response(status=503, text=f"store unavailable: {exc}\n")
    return web.Response(text="OK")


async def metrics_page(request):
    guard = request.app[OPTIONS].guard
    stats = await request.app[STORE].host_stats(live_since(request.app))
    live = {s: total - expired for s, (total, expired) in stats.items() if total > expired}
    fleet_held = request.app[VIEWS].fleet_held
    held = {s: expired for s, (total, expired) in stats.items() if guard.holds(total, expired, fleet_held)}
    return web.Response(text=request.app[METRICS].render(live, held), content_type="text/plain",
                        charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"})


async def sweep_once(app, services=None, force=False):
    """One sweep (all services, or ``services``); ``force`` deletes every expired host regardless
    of the guard. Returns the per-service results."""
    options, metrics = app[OPTIONS], app[METRICS]
    since = live_since(app)
    # The worker's fleet-wide hold (released only a grace after the share fell, see Views), or the
    # share now if this worker's views have not polled it yet.
    fleet_held = not force and (app[VIEWS].fleet_held or options.guard.holds(*await app[STORE].fleet_stats(since)))
    results = await app[STORE].guarded_sweep(since, since - options.sweep_grace, options.guard,
                                             services=services, force=force, fleet_held=fleet_held)
    metrics.inc("discovery_sweeps_total")
    held = app[HELD]
    for result in results:
        if result.deleted:
            metrics.inc("discovery_swept_hosts_total", result.deleted)
            app[VIEWS].invalidate(result.service)
        if result.held:
            metrics.inc("discovery_sweeps_held_total")
            if result.service not in held:
                log.warning("sweep guard: holding %s: %d of its %d hosts stopped checking in (more than %d and "
                            "more than %g%% at once); nothing removed, they stay visible in EDS until they "
                            "check in again or an operator forces a sweep (POST /v1/sweep/%s?force=true)",
                            result.service, result.expired, result.total, options.guard.min_hosts,
                            100 * options.guard.fraction, result.service)
            held[result.service] = result
        elif held.pop(result.service, None) is not None:
            log.warning("sweep guard: released %s (%s; %d of %d hosts expired, %d deleted)", result.service,
                        "forced" if force else "check-ins resumed", result.expired, result.total, result.deleted)
    if services is None:  # services gone from the store are no longer held
        for service in set(held) - {r.service for r in results}:
            del held[service]
    return results


async def force_sweep(request):
    """``POST /v1/sweep[/<service>][?force=true]``: run a sweep now; with ``force`` the guard is
    ignored and every expired host of those services is deleted (the operator's release)."""
    failure = request.app[AUTH].refusal(request, "operator")
    if failure:
        return forbidden("operator", failure)
    service = request.match_info.get("service")
    if service is not None:
        try:
            validate_service(service)
        except InvalidRegistration as exc:
            return error(400, str(exc), field=exc.field)
    force = request.query.get("force", "").lower() in ("1", "true", "yes")
    results = await sweep_once(request.app, services=None if service is None else [service], force=force)
    if force:
        log.warning("forced sweep of %s from %s: %d hosts deleted", service or "every service", request.remote,
                    sum(r.deleted for r in results))
    return json_response({"forced": force, "services": [
        {"service": r.service, "hosts": r.total, "expired": r.expired, "deleted": r.deleted, "held": r.held}
        for r in results]})


async def expire_hosts(request):
    """``POST /v1/expire`` (an operator: the master's presence cleanup): JSON ``{"ips": [...],
    "idle_for": seconds, "reason": text}``. The live hosts on those addresses expire ``idle_for``
    seconds after their last check-in instead of a TTL after it: at once if they have been silent
    that long, else then, unless they check in again (a host still heartbeating is never lost).
    Expired hosts are hidden and swept like any others, sweep guard included."""
    app = request.app
    failure = app[AUTH].refusal(request, "operator")
    if failure:
        return forbidden("operator", failure)
    try:
        body = await request.json()
        ips = sorted({validate_ip(ip) for ip in body["ips"]})
        idle_for = float(body.get("idle_for", 0))
        reason = str(body.get("reason", ""))[:200]
        if idle_for < 0:
            raise ValueError("idle_for: must be >= 0 seconds")
    except (ValueError, KeyError, TypeError, InvalidRegistration) as exc:
        return error(400, f"expected JSON {{\"ips\": [addresses], \"idle_for\": seconds}}: {exc}")
    hosts = await app[STORE].shorten(ips, since=live_since(app), by=app[TTL] - idle_for)
    for service in {host.service for host in hosts}:
        app[VIEWS].invalidate(service)
    app[METRICS].inc("discovery_early_expiries_total", len(hosts))
    now = time.time()
    expiring = [{"service": h.service, "ip": h.ip_address, "port": h.port,
                 "expires_in": round(max(0.0, h.last_check_in + app[TTL] - now), 3)} for h in hosts]
    log.warning("early expiry of %d host(s) on %s, %gs after their last check-in (%s, from %s): %s", len(hosts),
                ", ".join(ips), idle_for, reason or "no reason given", request.remote,
                ", ".join(f"{e['service']} {e['ip']}:{e['port']} in {e['expires_in']:g}s" for e in expiring) or "none")
    return json_response({"expiring": expiring})


def background(interval, sweeper):
    """A cleanup context: the change-stamp poll (every worker) and, in one worker per instance,
    the sweeper every ``interval`` seconds (a failing sweep is logged and retried)."""
    async def sweep_loop(app):
        while True:
            await asyncio.sleep(interval)
            try:
                results = await sweep_once(app)
                swept = sum(r.deleted for r in results)
                if swept:
                    log.info("swept %d expired hosts", swept)
            except StoreError as exc:
                app[METRICS].inc("discovery_errors_total", operation="sweep")
                log.error("sweep failed: %s", exc)

    async def context(app):
        tasks = [asyncio.create_task(app[VIEWS].run())]
        if sweeper:
            tasks.append(asyncio.create_task(sweep_loop(app)))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app[STORE].close()
    return context


def default_sweep_interval(ttl):
    return min(60.0, max(0.5, ttl / 4))


@dataclass(frozen=True)
class Options:
    guard: SweepGuard
    sweep_grace: float
    not_modified: bool


def create_app(store, ttl=DEFAULT_TTL, env="production", sweep_interval=None, *, guard=None, sweep_grace=None,
               check_interval=DEFAULT_CHECK_INTERVAL, not_modified=True, metrics=None, sweeper=True, auth=None):
    """``auth``: an :class:`Authenticator` (default: off)."""
    app = web.Application(middlewares=[store_errors], client_max_size=MAX_BODY)
    guard = guard or SweepGuard()
    app[STORE], app[TTL], app[ENV], app[METRICS] = store, float(ttl), env, metrics or Metrics()
    app[AUTH] = auth or Authenticator()
    app[AUTH].metrics = app[METRICS]
    app[OPTIONS] = options = Options(guard, float(ttl) / 2 if sweep_grace is None else float(sweep_grace),
                                     not_modified)
    app[VIEWS] = Views(store, ttl, guard, check_interval, grace=options.sweep_grace, metrics=app[METRICS])
    app[HELD] = {}
    app.cleanup_ctx.append(background(sweep_interval or default_sweep_interval(ttl), sweeper))
    app.router.add_post("/v1/registration/{service}", register, name="register")
    app.router.add_get("/v1/registration/{service}", list_hosts, name="list")
    app.router.add_delete("/v1/registration/{service}/{endpoint}", deregister, name="deregister")
    app.router.add_post("/v1/sweep", force_sweep, name="sweep")
    app.router.add_post("/v1/sweep/{service}", force_sweep, name="sweep_service")
    app.router.add_post("/v1/expire", expire_hosts, name="expire")
    app.router.add_post("/v3/discovery:endpoints", endpoints, name="eds")
    app.router.add_get("/healthcheck", healthcheck, name="healthcheck")
    app.router.add_get("/metrics", metrics_page, name="metrics")
    return app


def listen_address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def positive_seconds(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0 seconds")
    return value


def share(text):
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a share in (0, 1] (1 turns the guard off)")
    return value


def count(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0")
    return value


def workers_count(text):
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1-64 worker processes")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="envoy-discovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=listen_address, default=("127.0.0.1", 8080), help="HOST:PORT")
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--redis", metavar="URL", help="shared store, e.g. redis://127.0.0.1:6379/0")
    backend.add_argument("--sqlite", metavar="PATH",
                         help="embedded store file (default: in memory, lost on restart)")
    parser.add_argument("--ttl", type=positive_seconds, default=DEFAULT_TTL,
                        help="seconds a check-in stays valid (default 600)")
    parser.add_argument("--sweep-interval", type=positive_seconds, help="default: ttl/4, 0.5-60 s")
    parser.add_argument("--sweep-guard", type=share, default=0.5, metavar="SHARE",
                        help="hold a service's sweep when more than this share of its hosts expired at once "
                             "(default 0.5; 1 turns the guard off)")
    parser.add_argument("--sweep-guard-min", type=count, default=1, metavar="HOSTS",
                        help="a sweep removing at most this many of a service's hosts is never held (default 1)")
    parser.add_argument("--sweep-grace", type=positive_seconds, metavar="SECONDS",
                        help="expired hosts stay stored (hidden) this long before deletion, so a wave of "
                             "expiries is judged as one (default ttl/2)")
    parser.add_argument("--workers", type=workers_count, default=1,
                        help="worker processes sharing the port (SO_REUSEPORT); >1 needs --redis or --sqlite PATH")
    parser.add_argument("--cache-check-interval", type=positive_seconds, default=DEFAULT_CHECK_INTERVAL,
                        metavar="SECONDS", help="how often each worker polls the store's change stamps "
                                                f"(default {DEFAULT_CHECK_INTERVAL:g})")
    parser.add_argument("--not-modified", action=argparse.BooleanOptionalAction, default=True,
                        help="answer 304 to an EDS request that already has the current version (default on)")
    parser.add_argument("--auth", choices=AUTH_MODES, default="off",
                        help="registrations and deregistrations must carry a registration token (docs/discovery.md): "
                             "audit checks, counts and logs but accepts; enforce refuses with 403 (default off)")
    parser.add_argument("--auth-keys-file", metavar="PATH",
                        help="'<key id> <secret>' per line: the keys tokens are signed with (re-read when it changes)")
    parser.add_argument("--auth-peer-check", action=argparse.BooleanOptionalAction, default=True,
                        help="a registered address must be the address the request came from (default on; off "
                             "only behind NAT, where tokens must carry addresses pinned in pillar)")
    parser.add_argument("--env", default="production", help="the `env` GET /v1/registration answers")
    parser.add_argument("--pidfile", help="write the pid here; removed on clean exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.workers > 1 and not (args.redis or (args.sqlite and args.sqlite != ":memory:")):
        parser.error("--workers > 1 needs a store the workers share: --redis URL or --sqlite PATH")
    if args.auth != "off" and not args.auth_keys_file:
        parser.error(f"--auth {args.auth} needs --auth-keys-file")
    return args


def authenticator(args, metrics=None):
    return Authenticator(args.auth, args.auth_keys_file, peer_check=args.auth_peer_check, metrics=metrics)


def write_pidfile(path):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def app_from_args(args, metrics=None, sweeper=True):
    store = open_store(redis_url=args.redis, sqlite_path=args.sqlite)
    return app_with_store(args, store, metrics=metrics, sweeper=sweeper)


def app_with_store(args, store, metrics=None, sweeper=True):
    guard = SweepGuard(args.sweep_guard, args.sweep_guard_min)
    return create_app(store, args.ttl, args.env, args.sweep_interval, guard=guard, sweep_grace=args.sweep_grace,
                      check_interval=args.cache_check_interval, not_modified=args.not_modified,
                      metrics=metrics, sweeper=sweeper, auth=authenticator(args))


def reuseport_socket(host, port):
    """A listening socket in the SO_REUSEPORT group of (host, port): the kernel spreads new
    connections over the group's sockets by a hash of the connection's addresses."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def die_with_parent(parent):
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL, so no orphan keeps
    serving (and taking a share of the SO_REUSEPORT group) after its supervisor is gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def run_worker(args, index, sock, block, parent):
    """A forked worker: its own event loop and store connection, its own socket of the group."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent(parent)
    metrics = Metrics(block, row=index, rows=args.workers)
    try:
        app = app_from_args(args, metrics=metrics, sweeper=index == 0)
    except (StoreError, KeysError) as exc:
        log.error("worker %d: %s", index, exc)
        return 2
    try:
        web.run_app(app, sock=sock, access_log=None, print=None, handle_signals=True)
    except GracefulExit:  # a second SIGTERM during shutdown (the group's and the parent's)
        pass
    return 0


class Supervisor:
    """Pre-fork: the parent binds one SO_REUSEPORT socket per worker and keeps them all open, forks
    the workers and replaces any that dies (its socket, still open in the parent, keeps queueing
    that worker's share of new connections for the replacement). SIGTERM/SIGINT stop every worker
    (each finishes its requests) and then the parent."""

    RESPAWN_DELAY = 0.5

    def __init__(self, args):
        self.args = args
        host, port = args.listen
        self.sockets = [reuseport_socket(host, port) for _ in range(args.workers)]
        self.block = shared_block(args.workers)
        self.children = {}
        self.stopping = False

    def spawn(self, index):
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for other, sock in enumerate(self.sockets):
                    if other != index:
                        sock.close()
                code = run_worker(self.args, index, self.sockets[index], self.block, parent)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = (index, time.monotonic())
        log.info("worker %d started (pid %d)", index, pid)

    def stop(self, signum, frame):
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for index in range(self.args.workers):
            self.spawn(index)
        code = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index, started = self.children.pop(pid, (None, 0.0))
            if index is None:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            log.error("worker %d (pid %d) exited with %d after %.1fs", index, pid, exit_code,
                      time.monotonic() - started)
            if exit_code == 2:  # its store cannot be opened: no point in retrying
                code = 2
                self.stop(None, None)
                continue
            time.sleep(self.RESPAWN_DELAY)
            if not self.stopping:
                self.spawn(index)
        for sock in self.sockets:
            sock.close()
        return code


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        # Opened here to fail fast on a bad path or URL (or keys file); workers open their own after the fork.
        probe = open_store(redis_url=args.redis, sqlite_path=args.sqlite)
        authenticator(args)
    except (StoreError, KeysError) as exc:
        print(f"envoy-discovery: {exc}", file=sys.stderr)
        return 2
    if args.pidfile:
        write_pidfile(args.pidfile)
    host, port = args.listen
    log.info("listening on %s:%d, store %s, ttl %gs, %d worker(s), sweep guard %g of a service's hosts (min %d), "
             "auth %s", host, port, args.redis or args.sqlite or ":memory:", args.ttl, args.workers, args.sweep_guard,
             args.sweep_guard_min, args.auth)
    try:
        if args.workers == 1:
            app = app_with_store(args, probe)
            web.run_app(app, host=host, port=port, access_log=None, print=None, handle_signals=True)
            return 0
        if isinstance(probe, SqliteStore):
            probe.db.close()
        try:
            supervisor = Supervisor(args)
        except OSError as exc:
            print(f"envoy-discovery: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 2
        return supervisor.run()
    finally:
        if args.pidfile:
            with contextlib.suppress(FileNotFoundError):
                os.remove(args.pidfile)


if __name__ == "__main__":
    sys.exit(main())
