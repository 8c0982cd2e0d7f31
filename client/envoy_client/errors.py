"""
The exceptions ``envoy_client`` raises. Every one derives from :class:`EnvoyClientError`, and each
message says what happened, to which service, and what to check.

    EnvoyClientError
    ├── ConfigError                 client.json (or ENVOY_EGRESS) is not valid: names the file and field
    ├── NoEgressError               nothing accepts connections on the egress address
    ├── EgressConnectionError       the connection to the egress broke before a response
    ├── UpstreamError               the call got an HTTP error status (4xx/5xx)
    │   ├── UnknownServiceError     the egress has no route for the service (response flag NR)
    │   └── UpstreamTimeoutError    Envoy's timeout expired (504, flag UT): also an EnvoyTimeoutError
    ├── EnvoyTimeoutError           a timeout: ``whose`` says whose
    │   ├── DeadlineExceededError   the inbound request's budget ran out before the call was sent
    │   ├── ClientTimeoutError      the client's own safety timeout: Envoy did not answer at all
    │   └── UpstreamTimeoutError
    └── InvalidJSONError            a JSON helper got a body that is not JSON
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

# Envoy's response flags (the short form of %RESPONSE_FLAGS%), in words a developer can act on.
RESPONSE_FLAGS: dict[str, str] = {
    "UH": "no healthy upstream host in the cluster",
    "UF": "upstream connection failure",
    "UO": "upstream overflow: a circuit breaker is open",
    "NR": "no route: the egress has no virtual host or route for this service",
    "URX": "retry limit reached",
    "NC": "upstream cluster not found",
    "DT": "request or connection exceeded max_connection_duration / max_stream_duration",
    "DC": "downstream (caller) connection terminated",
    "LH": "local service failed its health check",
    "UT": "upstream request timeout",
    "LR": "connection reset locally by Envoy",
    "UR": "upstream remote reset",
    "UC": "upstream connection terminated",
    "DI": "request delayed by fault injection",
    "FI": "request aborted by fault injection",
    "RL": "rate limited locally",
    "UAEX": "denied by the external authorization service",
    "RLSE": "rate limit service error",
    "IH": "invalid value in a strictly checked x-envoy-* request header",
    "SI": "stream idle timeout",
    "DPE": "downstream HTTP protocol error",
    "UPE": "upstream HTTP protocol error",
    "UMSDR": "upstream request reached its max stream duration",
    "OM": "overload manager terminated the request",
    "DF": "DNS resolution failed",
    "DO": "dropped by Envoy (drop overload)",
}


def describe_flags(flags: Sequence[str]) -> str:
    """``"UF (upstream connection failure), URX (...)"``; unknown flags are listed as they are."""
    return ", ".join(f"{flag} ({RESPONSE_FLAGS[flag]})" if flag in RESPONSE_FLAGS else flag for flag in flags)


class EnvoyClientError(Exception):
    """Base class of every error raised by envoy_client."""


class ConfigError(EnvoyClientError, ValueError):
    """The client configuration is not valid. ``source`` is the file (or variable), ``field`` the
    dotted path of the offending field (empty for the file as a whole)."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class NoEgressError(EnvoyClientError, ConnectionError):
    """Nothing accepted the connection on the egress address (connection refused, or no route)."""

    def __init__(self, service: str, address: str, port: int, source: str, cause: BaseException | None) -> None:
        self.service = service
        self.address = address
        self.port = port
        self.source = source
        reason = f" ({_root_cause(cause)})" if cause is not None else ""
        super().__init__(
            f"no Envoy is listening on the egress {_hostport(address, port)}{reason}, "
            f"so the call to service {service!r} was not sent. That address came from {source}. "
            f"Check: is Envoy running on this host (systemctl status envoy, or the restarter's status)? "
            f"Does its egress listener bind {_hostport(address, port)} (admin /listeners)? "
            f"Does the client configuration point at it (ENVOY_CLIENT_CONFIG, /etc/envoy/client.json, "
            f"ENVOY_EGRESS, in that order)?"
        )


class EgressConnectionError(EnvoyClientError, ConnectionError):
    """The connection to the local Envoy broke after it was accepted, before a response arrived."""

    def __init__(self, service: str, address: str, port: int, request_id: str | None,
                 cause: BaseException | None) -> None:
        self.service = service
        self.address = address
        self.port = port
        self.request_id = request_id
        super().__init__(
            f"the connection to the egress {_hostport(address, port)} broke before Envoy answered the call "
            f"to service {service!r} (request id {request_id}): {_root_cause(cause)}. Envoy may have "
            f"restarted or crashed: check its logs and admin /server_info."
        )


class EnvoyTimeoutError(EnvoyClientError):
    """A timeout. ``whose`` is one of ``"envoy"`` (Envoy's upstream timeout for the call),
    ``"deadline"`` (the inbound request's remaining budget) or ``"client"`` (the client's own safety
    timeout: Envoy itself did not answer)."""

    whose: str = ""


class DeadlineExceededError(EnvoyTimeoutError):
    """The inbound request's deadline (``x-envoy-expected-rq-timeout-ms``) leaves too little time
    for the call: raised before anything is sent."""

    whose = "deadline"

    def __init__(self, service: str, remaining_ms: float, minimum_ms: int, budget_ms: int) -> None:
        self.service = service
        self.remaining_ms = remaining_ms
        self.minimum_ms = minimum_ms
        self.budget_ms = budget_ms
        super().__init__(
            f"the call to service {service!r} was not sent: the inbound request's deadline "
            f"(x-envoy-expected-rq-timeout-ms: {budget_ms}) leaves {max(remaining_ms, 0):.0f} ms, "
            f"below the smallest timeout allowed for {service!r} ({minimum_ms} ms). Whoever called this "
            f"service has stopped waiting or is about to."
        )


class ClientTimeoutError(EnvoyTimeoutError):
    """The client's own socket timeout (Envoy's timeout plus a grace period) expired: Envoy did not
    answer at all, which points at Envoy or the host, not at the upstream service."""

    whose = "client"

    def __init__(self, service: str, address: str, port: int, seconds: float, request_id: str | None) -> None:
        self.service = service
        self.seconds = seconds
        self.request_id = request_id
        super().__init__(
            f"the local Envoy on {_hostport(address, port)} did not answer the call to service {service!r} "
            f"within {seconds:g} s (the client's own safety timeout: Envoy's timeout for the call plus a "
            f"grace period; request id {request_id}). Envoy should have answered 504 before this: "
            f"check that Envoy is healthy (admin /ready, /stats) and the host is not overloaded."
        )


class UpstreamError(EnvoyClientError):
    """The call got an HTTP error status. ``flags`` are Envoy's response flags (empty when Envoy
    added none: the status came from the upstream service itself), ``None`` when the egress does
    not send the ``x-envoy-response-flags`` header at all."""

    def __init__(self, service: str, method: str, path: str, status: int, reason: str,
                 flags: tuple[str, ...] | None, request_id: str | None, body: str,
                 response: requests.Response | None = None, detail: str = "") -> None:
        self.service = service
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        self.flags = flags
        self.request_id = request_id
        self.body = body
        self.response = response
        if flags is None:
            origin = ("Envoy's response flags unknown: the egress sends no x-envoy-response-flags header "
                      "(see envoy_client's README, 'What the egress must do')")
        elif flags:
            origin = f"Envoy's response flags: {describe_flags(flags)}"
        else:
            origin = "no Envoy response flags: the status came from the upstream service itself"
        excerpt = body.strip().replace("\n", " ")
        if len(excerpt) > 200:
            excerpt = excerpt[:200] + "..."
        message = (f"{service} {method} {path} -> {status} {reason}".rstrip()
                   + f"; {origin}; request id {request_id}")
        if detail:
            message += f". {detail}"
        if excerpt:
            message += f"; body: {excerpt!r}"
        super().__init__(message)


class UnknownServiceError(UpstreamError):
    """The egress answered 404 with response flag NR: it has no virtual host for this service."""


class UpstreamTimeoutError(UpstreamError, EnvoyTimeoutError):
    """Envoy answered 504 with response flag UT: its timeout for the call expired. ``timeout_ms``
    and ``timeout_source`` say which timeout and where its value came from."""

    whose = "envoy"

    def __init__(self, service: str, method: str, path: str, status: int, reason: str,
                 flags: tuple[str, ...] | None, request_id: str | None, body: str,
                 response: requests.Response | None = None, detail: str = "", *, timeout_ms: int,
                 per_try_timeout_ms: int | None, retries: int, timeout_source: str) -> None:
        self.timeout_ms = timeout_ms
        self.per_try_timeout_ms = per_try_timeout_ms
        self.retries = retries
        self.timeout_source = timeout_source
        per_try = (f", {per_try_timeout_ms} ms per try (x-envoy-upstream-rq-per-try-timeout-ms) with "
                   f"{retries} retries" if per_try_timeout_ms else "")
        explained = (f"Envoy's timeout for this call expired: {timeout_ms} ms overall "
                     f"(x-envoy-upstream-rq-timeout-ms, from {timeout_source}){per_try}; the upstream service "
                     f"{service!r} did not answer in time")
        super().__init__(service, method, path, status, reason, flags, request_id, body, response,
                         f"{explained}. {detail}" if detail else explained)


class InvalidJSONError(EnvoyClientError, ValueError):
    """A JSON helper got a successful response whose body is not JSON."""

    def __init__(self, service: str, method: str, path: str, status: int, content_type: str, body: str,
                 request_id: str | None) -> None:
        self.service = service
        self.status = status
        self.content_type = content_type
        self.body = body
        self.request_id = request_id
        excerpt = body[:200] + ("..." if len(body) > 200 else "")
        super().__init__(f"{service} {method} {path} -> {status}: the body is not JSON "
                         f"(content-type {content_type or 'none'}; request id {request_id}): {excerpt!r}")


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _root_cause(exc: BaseException | None) -> str:
    """The innermost cause of a requests/urllib3 error chain, as text."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        nested = exc.__cause__ or exc.__context__
        inner = getattr(exc, "reason", None)
        if isinstance(inner, BaseException):
            nested = inner
        elif exc.args and isinstance(exc.args[0], BaseException):
            nested = exc.args[0]
        if nested is None:
            break
        exc = nested
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown cause"
