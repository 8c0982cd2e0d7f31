"""
A tiny upstream app for tests, benchmarks and the demo: answers every path with
``<name> <method> <path>`` (and the Host it was sent, in ``x-upstream-host``) and serves
``/healthcheck``. Run it as its own process so the load client and the app never share a GIL:

    python -m tests.helpers.app --port 8080 --name foo
"""

import argparse
import asyncio
import signal

from aiohttp import web


def make_app(name):
    async def healthcheck(request):
        return web.Response(text="OK")

    async def echo(request):
        body = f"{name} {request.method} {request.path_qs}\n"
        return web.Response(text=body, headers={"x-upstream": name, "x-upstream-host": request.host})

    app = web.Application()
    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve(port, name, host="127.0.0.1"):
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="app")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.name, args.host))


if __name__ == "__main__":
    main()
