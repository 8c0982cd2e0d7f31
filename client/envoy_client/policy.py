"""
The timeout and retry policy of one call, and the Envoy router headers that carry it.

Per knob: the call's argument, else client.json's value for the service, else client.json's
``defaults``, else the library default; then clamped into the network team's bounds (a warning is
logged the first time a value is clamped); then capped by the inbound request's deadline.
Non-idempotent methods (POST, PATCH, ...) get 0 retries unless the call passes ``retries=`` or
``idempotent=True``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import HARD_LIMITS, KNOWN_RETRY_ON, RETRY_ON, Bounds, Policy, ResolvedDefaults
from .errors import DeadlineExceededError

log = logging.getLogger("envoy_client")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

TIMEOUT_HEADER = "x-envoy-upstream-rq-timeout-ms"
PER_TRY_TIMEOUT_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"
MAX_RETRIES_HEADER = "x-envoy-max-retries"
RETRY_ON_HEADER = "x-envoy-retry-on"
ROUTER_HEADERS = frozenset({
    TIMEOUT_HEADER, PER_TRY_TIMEOUT_HEADER, MAX_RETRIES_HEADER, RETRY_ON_HEADER,
    # Also router headers: set only through this library, so the bounds hold.
    "x-envoy-retry-grpc-on", "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names",
    "x-envoy-hedge-on-per-try-timeout", "x-envoy-upstream-rq-timeout-alt-response",
})


@dataclass(frozen=True)
class EffectivePolicy:
    """What one call sends, and why: ``sources`` maps each knob to where its value came from."""

    service: str
    method: str
    timeout_ms: int
    per_try_timeout_ms: int | None
    retries: int
    retry_on: str
    sources: Mapping[str, str] = field(default_factory=dict)
    adjustments: tuple[str, ...] = ()

    def headers(self) -> dict[str, str]:
        """Envoy's router headers for this policy."""
        out = {TIMEOUT_HEADER: str(self.timeout_ms), MAX_RETRIES_HEADER: str(self.retries)}
        if self.per_try_timeout_ms is not None:
            out[PER_TRY_TIMEOUT_HEADER] = str(self.per_try_timeout_ms)
        if self.retries > 0:
            out[RETRY_ON_HEADER] = self.retry_on
        return out


_warned: set[tuple[str, str, object]] = set()
_warned_lock = threading.Lock()


def _warn_once(service: str, knob: str, value: object, message: str) -> None:
    key = (service, knob, value)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("%s", message)


def check_override(knob: str, value: object) -> None:
    """A per-call value must have the right type and lie within the library's hard limits
    (nonsense is refused with ValueError/TypeError; values merely outside the bounds are clamped)."""
    if knob == "retry_on":
        if not isinstance(value, str):
            raise TypeError(f"retry_on must be a string such as '5xx,connect-failure', not {type(value).__name__}")
        if not RETRY_ON.fullmatch(value):
            raise ValueError(f"retry_on must be a comma-separated list of Envoy retry conditions, not {value!r}")
        unknown = [c for c in value.split(",") if c not in KNOWN_RETRY_ON]
        if unknown:
            raise ValueError(f"retry_on: unknown Envoy retry condition(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(KNOWN_RETRY_ON))}")
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{knob} must be an integer, not {type(value).__name__}")
    low, high = HARD_LIMITS[knob]
    if not low <= value <= high:
        raise ValueError(f"{knob} must be between {low} and {high}, not {value}")


def effective_policy(resolved: ResolvedDefaults, method: str, overrides: Policy, idempotent: bool | None = None,
                     remaining_ms: float | None = None, budget_ms: int | None = None) -> EffectivePolicy:
    """The policy one call sends. ``remaining_ms`` is what is left of the inbound deadline
    (``budget_ms`` its original value), ``None`` when the call is not made for an inbound request
    with a deadline. Raises :class:`DeadlineExceededError` when too little is left."""
    service = resolved.service
    method = method.upper()
    values: dict[str, object] = {
        "timeout_ms": resolved.policy.timeout_ms, "per_try_timeout_ms": resolved.policy.per_try_timeout_ms,
        "retries": resolved.policy.retries, "retry_on": resolved.policy.retry_on,
    }
    sources = dict(resolved.sources)
    adjustments: list[str] = []
    for knob in values:
        value = getattr(overrides, knob)
        if value is not None:
            check_override(knob, value)
            values[knob] = value
            sources[knob] = f"the call argument {knob}={value!r}"

    retryable = idempotent if idempotent is not None else method in IDEMPOTENT_METHODS
    if not retryable and overrides.retries is None and values["retries"] != 0:
        values["retries"] = 0
        sources["retries"] = (f"{method} is not idempotent: 0 retries unless the call passes retries= "
                              f"or idempotent=True")

    for knob in ("timeout_ms", "per_try_timeout_ms", "retries"):
        value = values[knob]
        bounds = resolved.bounds.get(knob)
        if value is None or bounds is None:
            continue
        assert isinstance(value, int)
        clamped = _clamp(value, bounds)
        if clamped != value:
            side = "max" if value > bounds.max else "min"
            note = (f"{knob}={value} for service {service!r} is outside the bounds [{bounds.min}, {bounds.max}] "
                    f"from {resolved.bound_sources[knob]}: clamped to the {side}, {clamped}")
            adjustments.append(note)
            sources[knob] = f"{sources[knob]}, clamped to {side} {clamped} ({resolved.bound_sources[knob]})"
            _warn_once(service, knob, value, "envoy_client: " + note)
            values[knob] = clamped

    timeout_ms = values["timeout_ms"]
    assert isinstance(timeout_ms, int)
    if remaining_ms is not None:
        floor_ms = resolved.bounds["timeout_ms"].min if "timeout_ms" in resolved.bounds else 1
        if remaining_ms < floor_ms:
            raise DeadlineExceededError(service, remaining_ms, floor_ms, budget_ms or 0)
        cap = math.floor(remaining_ms)
        if cap < timeout_ms:
            adjustments.append(f"timeout_ms capped from {timeout_ms} to {cap}: what is left of the inbound "
                               f"request's deadline")
            sources["timeout_ms"] = (f"the inbound deadline ({cap} ms left of x-envoy-expected-rq-timeout-ms "
                                     f"{budget_ms}; otherwise {timeout_ms} from {sources['timeout_ms']})")
            timeout_ms = cap

    per_try = values["per_try_timeout_ms"]
    assert per_try is None or isinstance(per_try, int)
    if per_try is not None and per_try >= timeout_ms:
        adjustments.append(f"per_try_timeout_ms {per_try} dropped: not below the overall timeout {timeout_ms}")
        sources["per_try_timeout_ms"] = f"dropped (not below the overall timeout; was {sources['per_try_timeout_ms']})"
        per_try = None
    retries = values["retries"]
    retry_on = values["retry_on"]
    assert isinstance(retries, int) and isinstance(retry_on, str)
    return EffectivePolicy(service, method, timeout_ms, per_try, retries, retry_on, sources, tuple(adjustments))


def _clamp(value: int, bounds: Bounds) -> int:
    return max(bounds.min, min(bounds.max, value))
