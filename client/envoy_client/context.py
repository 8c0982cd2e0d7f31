"""
Propagation: the inbound request's id, tracing headers and deadline, held in a context variable
so that every outbound call made while handling that request carries them.

The WSGI and ASGI middleware (:mod:`envoy_client.middleware`) set it per request; anything else
(a task queue worker, a framework hook) can use :func:`inbound`::

    with envoy_client.inbound(headers):
        client.get("bar", "/v1/rides")

Threads started with ``contextvars.copy_context().run`` and ``asyncio.to_thread`` see the same
context; a plain ``threading.Thread`` does not (see the README).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

REQUEST_ID = "x-request-id"
EXPECTED_TIMEOUT = "x-envoy-expected-rq-timeout-ms"
# What is propagated unchanged to every outbound call: the request id and the tracing headers of
# the B3 (Zipkin), W3C Trace Context and OpenTracing (Lightstep) formats.
PROPAGATED_HEADERS = (
    REQUEST_ID,
    "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
    "traceparent", "tracestate",
    "x-ot-span-context",
)
_PROPAGATED = frozenset(PROPAGATED_HEADERS)


@dataclass(frozen=True)
class InboundContext:
    """What was captured from one inbound request. ``deadline`` is a ``time.monotonic()`` value
    (``None`` when the request carried no ``x-envoy-expected-rq-timeout-ms``)."""

    headers: Mapping[str, str] = field(default_factory=dict)
    deadline: float | None = None
    budget_ms: int | None = None

    @property
    def request_id(self) -> str | None:
        return self.headers.get(REQUEST_ID)

    def remaining_ms(self, now: float | None = None) -> float | None:
        """Milliseconds left before the deadline (negative once past), ``None`` without one."""
        if self.deadline is None:
            return None
        return (self.deadline - (time.monotonic() if now is None else now)) * 1000.0


_current: contextvars.ContextVar[InboundContext | None] = contextvars.ContextVar("envoy_client_inbound",
                                                                                 default=None)


def current() -> InboundContext | None:
    """The inbound context of the request being handled, if any."""
    return _current.get()


def capture(headers: Mapping[str, str] | Iterable[tuple[str, str]], received_at: float | None = None
            ) -> InboundContext:
    """Build an :class:`InboundContext` from inbound headers (any case; a mapping or pairs).
    ``received_at`` is the ``time.monotonic()`` at which the request arrived (default: now): the
    deadline counts from there, so time already spent is subtracted from the budget."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    captured: dict[str, str] = {}
    budget_ms: int | None = None
    for name, value in items:
        lname = name.lower()
        if lname in _PROPAGATED and lname not in captured:
            captured[lname] = value
        elif lname == EXPECTED_TIMEOUT and budget_ms is None:
            budget_ms = _parse_ms(value)
    start = time.monotonic() if received_at is None else received_at
    deadline = start + budget_ms / 1000.0 if budget_ms is not None else None
    return InboundContext(captured, deadline, budget_ms)


def _parse_ms(value: str) -> int | None:
    value = value.strip()
    if not value.isdigit():
        return None
    ms = int(value)
    # 0 means "no timeout" to Envoy: no deadline.
    return ms if ms > 0 else None


def set_current(context: InboundContext | None) -> contextvars.Token[InboundContext | None]:
    """Set the inbound context; pass the token to :func:`reset_current` when the request is done."""
    return _current.set(context)


def reset_current(token: contextvars.Token[InboundContext | None]) -> None:
    _current.reset(token)


@contextmanager
def inbound(headers: Mapping[str, str] | Iterable[tuple[str, str]] | InboundContext,
            received_at: float | None = None) -> Iterator[InboundContext]:
    """Handle one inbound request: outbound calls inside the block carry its ids and honour its
    deadline."""
    context = headers if isinstance(headers, InboundContext) else capture(headers, received_at)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
