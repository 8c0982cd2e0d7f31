"""
Where the local Envoy's egress is, and the timeout/retry policy per upstream service: the
``client.json`` file the formula writes on each host, validated strictly (every error names the
file and the field), and the lookup order when there is no such file.

Lookup order (the first that applies wins; :func:`load_config` returns where it came from):

1. an explicit argument: ``Client(config=...)``, ``Client(config_path=...)`` or ``Client(egress=...)``;
2. the file named by ``ENVOY_CLIENT_CONFIG`` (it must exist when the variable is set);
3. ``/etc/envoy/client.json`` when it exists;
4. ``ENVOY_EGRESS=host:port`` (egress only; library defaults, no bounds);
5. ``127.0.0.1:9001`` (egress only; library defaults, no bounds).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

FORMAT = 1
DEFAULT_PATH = "/etc/envoy/client.json"
CONFIG_ENV = "ENVOY_CLIENT_CONFIG"
EGRESS_ENV = "ENVOY_EGRESS"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9001

# The formula's catalogue names (envoy:services in pillar): the egress virtual host of each.
SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
RETRY_ON = re.compile(r"[a-z0-9-]+(,[a-z0-9-]+)*")
# Envoy's HTTP retry conditions (x-envoy-retry-on). Per-call values are checked against this list
# to catch typos; client.json values only against RETRY_ON, so a condition a newer Envoy adds to
# the pillar does not break every client on the host.
KNOWN_RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure",
})

# The knobs, and the library's hard limits: a value outside these is an error, not clamped.
KNOBS = ("timeout_ms", "per_try_timeout_ms", "retries", "retry_on")
BOUNDED = ("timeout_ms", "per_try_timeout_ms", "retries")
HARD_LIMITS = {"timeout_ms": (1, 3_600_000), "per_try_timeout_ms": (1, 3_600_000), "retries": (0, 10)}


@dataclass(frozen=True)
class Bounds:
    """The network team's bounds for one knob (inclusive)."""

    min: int
    max: int


@dataclass(frozen=True)
class Policy:
    """Timeout and retry policy for calls to one service. ``None`` in an override means "not set"."""

    timeout_ms: int | None = None
    per_try_timeout_ms: int | None = None
    retries: int | None = None
    retry_on: str | None = None


# The library defaults: Envoy's own route defaults and the formula's pillar defaults.
LIBRARY_DEFAULTS = Policy(timeout_ms=15000, per_try_timeout_ms=None, retries=1,
                          retry_on="5xx,connect-failure,refused-stream")


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream's entry in client.json: values it sets, and bounds it sets, each optional."""

    policy: Policy = Policy()
    set_fields: frozenset[str] = frozenset()
    bounds: Mapping[str, Bounds] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientConfig:
    """The parsed configuration. ``source`` says where it came from, for error messages."""

    address: str = DEFAULT_ADDRESS
    port: int = DEFAULT_PORT
    source: str = f"the library default {DEFAULT_ADDRESS}:{DEFAULT_PORT}"
    path: str | None = None
    defaults: Policy = Policy()
    defaults_set: frozenset[str] = frozenset()
    bounds: Mapping[str, Bounds] = field(default_factory=dict)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)

    def resolve(self, service: str) -> ResolvedDefaults:
        """The default policy and bounds for ``service``, each value with its source."""
        upstream = self.upstreams.get(service)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        bounds: dict[str, Bounds] = {}
        bound_sources: dict[str, str] = {}
        where = self.path or "client config"
        for knob in KNOBS:
            if upstream is not None and knob in upstream.set_fields:
                values[knob] = getattr(upstream.policy, knob)
                sources[knob] = f"{where} upstreams.{service}.{knob}"
            elif knob in self.defaults_set:
                values[knob] = getattr(self.defaults, knob)
                sources[knob] = f"{where} defaults.{knob}"
            else:
                values[knob] = getattr(LIBRARY_DEFAULTS, knob)
                sources[knob] = "the library default"
        for knob in BOUNDED:
            if upstream is not None and knob in upstream.bounds:
                bounds[knob] = upstream.bounds[knob]
                bound_sources[knob] = f"{where} upstreams.{service}.bounds.{knob}"
            elif knob in self.bounds:
                bounds[knob] = self.bounds[knob]
                bound_sources[knob] = f"{where} bounds.{knob}"
        return ResolvedDefaults(service, Policy(**values), sources, bounds, bound_sources,
                                known=upstream is not None)

    @property
    def egress(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class ResolvedDefaults:
    service: str
    policy: Policy
    sources: Mapping[str, str]
    bounds: Mapping[str, Bounds]
    bound_sources: Mapping[str, str]
    known: bool


# --- parsing ------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.source, path, problem)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
                ) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a JSON object, not {_kind(value)}")
        for key in value:
            if key not in allowed:
                hint = _close(key, allowed)
                raise self.fail(_join(path, key), "is not a known field" + (f" (did you mean {hint!r}?)" if hint
                                                                            else f"; known: {', '.join(allowed)}"))
        for key in required:
            if key not in value:
                raise self.fail(_join(path, key), "is required")
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, not {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(path, f"must be between {low} and {high}, not {value}")
        return value

    def knob(self, knob: str, value: Any, path: str) -> Any:
        if knob == "retry_on":
            if not isinstance(value, str) or not RETRY_ON.fullmatch(value):
                raise self.fail(path, "must be a comma-separated list of Envoy retry conditions such as "
                                      f"'5xx,connect-failure', not {value!r}")
            return value
        if knob == "per_try_timeout_ms" and value is None:
            return None
        low, high = HARD_LIMITS[knob]
        return self.integer(value, path, low, high)

    def policy(self, value: Mapping[str, Any], path: str) -> tuple[Policy, frozenset[str]]:
        parsed = {knob: self.knob(knob, value[knob], _join(path, knob)) for knob in KNOBS if knob in value}
        return Policy(**parsed), frozenset(parsed)

    def bounds(self, value: Any, path: str) -> dict[str, Bounds]:
        value = self.mapping(value, path, BOUNDED)
        out = {}
        for knob, entry in value.items():
            knob_path = _join(path, knob)
            entry = self.mapping(entry, knob_path, ("min", "max"), ("min", "max"))
            low, high = HARD_LIMITS[knob]
            lo = self.integer(entry["min"], _join(knob_path, "min"), low, high)
            hi = self.integer(entry["max"], _join(knob_path, "max"), low, high)
            if lo > hi:
                raise self.fail(_join(knob_path, "min"), f"({lo}) is above max ({hi})")
            out[knob] = Bounds(lo, hi)
        return out

    def within(self, policy: Policy, set_fields: frozenset[str], bounds: Mapping[str, Bounds], path: str,
               bounds_path: Mapping[str, str]) -> None:
        for knob in BOUNDED:
            value = getattr(policy, knob)
            if knob in set_fields and value is not None and knob in bounds:
                b = bounds[knob]
                if not b.min <= value <= b.max:
                    raise self.fail(_join(path, knob), f"({value}) is outside its bounds [{b.min}, {b.max}] "
                                                       f"from {bounds_path[knob]}")


def parse_config(data: Any, source: str) -> ClientConfig:
    """Validate a client.json document (already decoded) and build the config; ``source`` names
    the file in errors."""
    check = _Checker(source)
    top = check.mapping(data, "", ("format", "egress", "defaults", "bounds", "upstreams"), ("format", "egress"))
    if isinstance(top["format"], bool) or top["format"] != FORMAT:
        raise check.fail("format", f"must be {FORMAT} (this envoy_client reads format {FORMAT}), "
                                   f"not {top['format']!r}")
    egress = check.mapping(top["egress"], "egress", ("address", "port"), ("address", "port"))
    address = egress["address"]
    if not isinstance(address, str) or not address or any(c.isspace() or c in "/[]" for c in address):
        raise check.fail("egress.address", f"must be an IP address or host name, not {address!r}")
    port = check.integer(egress["port"], "egress.port", 1, 65535)

    defaults, defaults_set = Policy(), frozenset[str]()
    if "defaults" in top:
        defaults, defaults_set = check.policy(check.mapping(top["defaults"], "defaults", KNOBS), "defaults")
    bounds = check.bounds(top["bounds"], "bounds") if "bounds" in top else {}
    check.within(defaults, defaults_set, bounds, "defaults", {k: f"bounds.{k}" for k in bounds})

    upstreams: dict[str, UpstreamConfig] = {}
    raw_upstreams = top.get("upstreams", {})
    if not isinstance(raw_upstreams, dict):
        raise check.fail("upstreams", f"must be a JSON object (service name -> settings), not {_kind(raw_upstreams)}")
    for name, entry in raw_upstreams.items():
        path = f"upstreams.{name}"
        if not SERVICE_NAME.fullmatch(name):
            raise check.fail(path, "is not a service name (lowercase letters, digits, '-' and '_', "
                                   "starting with a letter, at most 63)")
        entry = check.mapping(entry, path, (*KNOBS, "bounds"))
        policy, set_fields = check.policy(entry, path)
        own_bounds = check.bounds(entry["bounds"], f"{path}.bounds") if "bounds" in entry else {}
        effective = {**bounds, **own_bounds}
        sources = {k: (f"{path}.bounds.{k}" if k in own_bounds else f"bounds.{k}") for k in effective}
        check.within(policy, set_fields, effective, path, sources)
        upstreams[name] = UpstreamConfig(policy, set_fields, own_bounds)
    return ClientConfig(address=address, port=port, source=f"{source}, field egress", path=source,
                        defaults=defaults, defaults_set=defaults_set, bounds=bounds, upstreams=upstreams)


def read_config(path: str | os.PathLike[str]) -> ClientConfig:
    """Read and validate a client.json file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "does not exist") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "is not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise ConfigError(source, "", f"has the key {exc.key!r} twice in one object") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(source, "", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_config(data, source)


def parse_egress(value: str, source: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    value = value.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^\s:/\[\]]+):([0-9]{1,5})", value)
    if not match:
        raise ConfigError(source, "", f"must be host:port (for example 127.0.0.1:9001), not {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(source, "", f"port must be between 1 and 65535, not {port}")
    return host, port


def load_config(config_path: str | os.PathLike[str] | None = None, egress: str | None = None,
                environ: Mapping[str, str] | None = None) -> ClientConfig:
    """The configuration by the lookup order in the module docstring. ``config_path`` and
    ``egress`` are the explicit arguments (``egress`` alone: egress only, library defaults)."""
    env = os.environ if environ is None else environ
    if config_path is not None:
        return read_config(config_path)
    if egress is not None:
        host, port = parse_egress(egress, "the egress argument")
        return ClientConfig(address=host, port=port, source=f"the egress argument {egress!r}")
    env_path = env.get(CONFIG_ENV)
    env_egress = env.get(EGRESS_ENV)
    ignored = f" ({EGRESS_ENV}={env_egress} is set but a config file comes first)" if env_egress else ""
    if env_path:
        config = read_config(env_path)
        return _replace_source(config, f"{env_path}, field egress (the file named by {CONFIG_ENV}){ignored}")
    if os.path.exists(DEFAULT_PATH):
        config = read_config(DEFAULT_PATH)
        return _replace_source(config, config.source + ignored) if ignored else config
    if env_egress:
        host, port = parse_egress(env_egress, f"the environment variable {EGRESS_ENV}")
        return ClientConfig(address=host, port=port, source=f"the environment variable {EGRESS_ENV}={env_egress}")
    return ClientConfig(source=f"the library default {DEFAULT_ADDRESS}:{DEFAULT_PORT} "
                               f"(no {CONFIG_ENV}, no {DEFAULT_PATH}, no {EGRESS_ENV})")


def _replace_source(config: ClientConfig, source: str) -> ClientConfig:
    return replace(config, source=source)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _close(key: str, allowed: tuple[str, ...]) -> str | None:
    matches = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return matches[0] if matches else None
