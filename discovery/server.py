"""
The discovery HTTP service on aiohttp:

    envoy-discovery --listen 127.0.0.1:8080 [--redis URL | --sqlite PATH] [--ttl 600]

Lyft's registration API v1 (``/v1/registration/<service>``), Envoy's v3 REST EDS
(``POST /v3/discovery:endpoints``), ``/healthcheck`` and Prometheus ``/metrics``.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone

from aiohttp import web

from discovery import eds
from discovery.metrics import Metrics
from discovery.model import InvalidRegistration, parse_endpoint, parse_registration, validate_service
from discovery.store import StoreError, open_store

log = logging.getLogger("discovery")

DEFAULT_TTL = 600.0
# Envoy's DiscoveryRequest carries its whole node (every extension it was built with): ~80 KiB.
MAX_BODY = 1024 * 1024
MAX_REGISTRATION_BODY = 16 * 1024  # a registration is a few hundred bytes
STORE, TTL, ENV, METRICS = web.AppKey("store", object), web.AppKey("ttl", float), \
    web.AppKey("env", str), web.AppKey("metrics", Metrics)


def json_response(payload, status=200):
    return web.json_response(payload, status=status, dumps=lambda o: json.dumps(o, separators=(",", ":")))


def error(status, message, **extra):
    return json_response({"error": message, **extra}, status=status)


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
    await request.app[STORE].register(host)
    metrics.inc("discovery_registrations_total", result="ok")
    return json_response(host_view(host))


async def list_hosts(request):
    try:
        service = validate_service(request.match_info["service"])
    except InvalidRegistration as exc:
        return error(400, str(exc), field=exc.field)
    hosts = await request.app[STORE].hosts(service, live_since(request.app))
    return json_response({"env": request.app[ENV], "service": service, "hosts": [host_view(h) for h in hosts]})


async def deregister(request):
    try:
        service = validate_service(request.match_info["service"])
        ip, port = parse_endpoint(request.match_info["endpoint"])
    except InvalidRegistration as exc:
        return error(400, str(exc), field=exc.field)
    deleted = await request.app[STORE].deregister(service, ip, port)
    request.app[METRICS].inc("discovery_deregistrations_total", deleted)
    if not deleted:
        return error(404, f"{service}: no host {request.match_info['endpoint']}")
    return json_response({"service": service, "deleted": deleted})


async def endpoints(request):
    metrics, store = request.app[METRICS], request.app[STORE]
    try:
        clusters = eds.requested_clusters(await request.json())
    except ValueError as exc:
        metrics.inc("discovery_eds_requests_total", result="rejected")
        return error(400, f"DiscoveryRequest: {exc}")
    since = live_since(request.app)
    if not clusters:  # a wildcard request: every service that has live hosts
        clusters = sorted(await store.host_counts(since))
    resources = [eds.cluster_load_assignment(name, await store.hosts(name, since)) for name in clusters]
    metrics.inc("discovery_eds_requests_total", result="ok")
    return json_response(eds.discovery_response(resources))


async def healthcheck(request):
    try:
        await request.app[STORE].ping()
    except StoreError as exc:
        return web.Response(status=503, text=f"store unavailable: {exc}\n")
    return web.Response(text="OK")


async def metrics_page(request):
    counts = await request.app[STORE].host_counts(live_since(request.app))
    return web.Response(text=request.app[METRICS].render(counts), content_type="text/plain",
                        charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"})


async def sweep_once(app):
    swept = await app[STORE].sweep(live_since(app))
    app[METRICS].inc("discovery_sweeps_total")
    app[METRICS].inc("discovery_swept_hosts_total", swept)
    return swept


def sweeper(interval):
    """A cleanup context: sweeps every ``interval`` seconds; a failing sweep is logged and retried."""
    async def loop(app):
        while True:
            await asyncio.sleep(interval)
            try:
                swept = await sweep_once(app)
                if swept:
                    log.info("swept %d expired hosts", swept)
            except StoreError as exc:
                app[METRICS].inc("discovery_errors_total", operation="sweep")
                log.error("sweep failed: %s", exc)

    async def context(app):
        task = asyncio.create_task(loop(app))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await app[STORE].close()
    return context


def default_sweep_interval(ttl):
    return min(60.0, max(0.5, ttl / 4))


def create_app(store, ttl=DEFAULT_TTL, env="production", sweep_interval=None):
    app = web.Application(middlewares=[store_errors], client_max_size=MAX_BODY)
    app[STORE], app[TTL], app[ENV], app[METRICS] = store, float(ttl), env, Metrics()
    app.cleanup_ctx.append(sweeper(sweep_interval or default_sweep_interval(ttl)))
    app.router.add_post("/v1/registration/{service}", register, name="register")
    app.router.add_get("/v1/registration/{service}", list_hosts, name="list")
    app.router.add_delete("/v1/registration/{service}/{endpoint}", deregister, name="deregister")
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
    parser.add_argument("--env", default="production", help="the `env` GET /v1/registration answers")
    parser.add_argument("--pidfile", help="write the pid here; removed on clean exit")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def write_pidfile(path):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        store = open_store(redis_url=args.redis, sqlite_path=args.sqlite)
    except StoreError as exc:
        print(f"envoy-discovery: {exc}", file=sys.stderr)
        return 2
    if args.pidfile:
        write_pidfile(args.pidfile)
    host, port = args.listen
    log.info("listening on %s:%d, store %s, ttl %gs", host, port, args.redis or args.sqlite or ":memory:", args.ttl)
    try:
        web.run_app(create_app(store, args.ttl, args.env, args.sweep_interval), host=host, port=port,
                    access_log=None, print=None, handle_signals=True)
    finally:
        if args.pidfile:
            with contextlib.suppress(FileNotFoundError):
                os.remove(args.pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
