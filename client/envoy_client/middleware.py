"""
WSGI and ASGI middleware (no framework dependency): capture the inbound request id, tracing
headers and Envoy's ``x-envoy-expected-rq-timeout-ms`` for the duration of each request, so that
outbound calls made by the app carry them and fit in the remaining time.

    app = envoy_client.WSGIMiddleware(app)       # Flask: app.wsgi_app = WSGIMiddleware(app.wsgi_app)
    app = envoy_client.ASGIMiddleware(app)       # Starlette, FastAPI, Quart, Django's ASGI app ...
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from types import TracebackType
from typing import Any

from .context import _current, capture, reset_current, set_current

# WSGI (PEP 3333) types, spelled out so that no typing-only dependency is needed.
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
# ASGI 3 types.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _environ_headers(environ: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            yield key[5:].replace("_", "-").lower(), value


class WSGIMiddleware:
    """Runs the app, and the iteration of its response, in a context holding the inbound request's
    ids and deadline."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        received = time.monotonic()
        context = contextvars.copy_context()
        context.run(_current.set, capture(_environ_headers(environ), received))
        result = context.run(self.app, environ, start_response)
        return _ContextIterable(context, result)


class _ContextIterable:
    """The app's response iterable, iterated and closed inside the request's context (a streaming
    response that calls other services while it is produced keeps the ids)."""

    def __init__(self, context: contextvars.Context, result: Iterable[bytes]) -> None:
        self._context = context
        self._result = result
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._result)
        return self._context.run(next, self._iterator)

    def __len__(self) -> int:
        # Lets a server set Content-Length for a one-item list, as it would without the wrapper.
        return len(self._result)  # type: ignore[arg-type]  # TypeError when it has no len: servers expect that

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            self._context.run(close)


class ASGIMiddleware:
    """Sets the inbound context for each HTTP or WebSocket connection scope, then calls the app.
    Other scopes (lifespan) pass through. A blocking call made through ``asyncio.to_thread`` keeps
    the ids (it copies the context); ``loop.run_in_executor`` does not, unless it is handed
    ``contextvars.copy_context().run``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        received = time.monotonic()
        headers = ((bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
                   for name, value in scope.get("headers") or ())
        token = set_current(capture(headers, received))
        try:
            await self.app(scope, receive, send)
        finally:
            reset_current(token)
