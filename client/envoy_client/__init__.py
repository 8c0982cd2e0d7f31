"""
envoy_client: the thin client library of the envoy formula's service mesh.

Name the service, get a response::

    import envoy_client

    rides = envoy_client.get_json("rides", "/v1/rides", params={"user": 42})
    envoy_client.post("bar", "/v1/things", json={"a": 1}, timeout_ms=500)

Every call goes to the local Envoy's egress listener with ``Host: <service>``, with the timeout and
retry policy as Envoy router headers (within the network team's bounds) and the inbound request's
id, tracing headers and deadline (see :class:`WSGIMiddleware` and :class:`ASGIMiddleware`).
The module-level functions share one :class:`Client` (one connection pool) per process.
"""

from __future__ import annotations

from typing import Any

import requests

from ._version import __version__
from .client import Client, default_client, parse_flags, set_default_client
from .config import (
    CONFIG_ENV,
    DEFAULT_PATH,
    EGRESS_ENV,
    LIBRARY_DEFAULTS,
    Bounds,
    ClientConfig,
    Policy,
    load_config,
    parse_config,
    read_config,
)
from .context import PROPAGATED_HEADERS, InboundContext, capture, current, inbound
from .errors import (
    RESPONSE_FLAGS,
    ClientTimeoutError,
    ConfigError,
    DeadlineExceededError,
    EgressConnectionError,
    EnvoyClientError,
    EnvoyTimeoutError,
    InvalidJSONError,
    NoEgressError,
    UnknownServiceError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .middleware import ASGIMiddleware, WSGIMiddleware
from .policy import IDEMPOTENT_METHODS, EffectivePolicy

__all__ = [
    "__version__",
    "Client", "default_client", "set_default_client", "parse_flags",
    "request", "get", "head", "options", "post", "put", "patch", "delete",
    "request_json", "get_json", "post_json", "put_json", "patch_json", "delete_json",
    "ClientConfig", "Policy", "Bounds", "LIBRARY_DEFAULTS", "load_config", "read_config", "parse_config",
    "CONFIG_ENV", "DEFAULT_PATH", "EGRESS_ENV",
    "InboundContext", "PROPAGATED_HEADERS", "capture", "current", "inbound",
    "WSGIMiddleware", "ASGIMiddleware",
    "EffectivePolicy", "IDEMPOTENT_METHODS",
    "EnvoyClientError", "ConfigError", "NoEgressError", "EgressConnectionError", "UpstreamError",
    "UnknownServiceError", "UpstreamTimeoutError", "EnvoyTimeoutError", "DeadlineExceededError",
    "ClientTimeoutError", "InvalidJSONError", "RESPONSE_FLAGS",
]


def request(method: str, service: str, path: str, **kwargs: Any) -> requests.Response:
    """:meth:`Client.request` on the process-wide client."""
    return default_client().request(method, service, path, **kwargs)


def get(service: str, path: str, **kwargs: Any) -> requests.Response:
    return default_client().request("GET", service, path, **kwargs)


def head(service: str, path: str, **kwargs: Any) -> requests.Response:
    return default_client().request("HEAD", service, path, **kwargs)


def options(service: str, path: str, **kwargs: Any) -> requests.Response:
    return default_client().request("OPTIONS", service, path, **kwargs)


def post(service: str, path: str, **kwargs: Any) -> requests.Response:
    return default_client().request("POST", service, path, **kwargs)


def put(service: str, path: str, **kwargs: Any) -> requests.Response:
    return default_client().request("PUT", service, path, **kwargs)


def patch(service: str, path: str, **kwargs: Any) -> requests.Response:
    return default_client().request("PATCH", service, path, **kwargs)


def delete(service: str, path: str, **kwargs: Any) -> requests.Response:
    return default_client().request("DELETE", service, path, **kwargs)


def request_json(method: str, service: str, path: str, *args: Any, **kwargs: Any) -> Any:
    """:meth:`Client.request_json` on the process-wide client."""
    return default_client().request_json(method, service, path, *args, **kwargs)


def get_json(service: str, path: str, **kwargs: Any) -> Any:
    return default_client().get_json(service, path, **kwargs)


def post_json(service: str, path: str, *args: Any, **kwargs: Any) -> Any:
    return default_client().post_json(service, path, *args, **kwargs)


def put_json(service: str, path: str, *args: Any, **kwargs: Any) -> Any:
    return default_client().put_json(service, path, *args, **kwargs)


def patch_json(service: str, path: str, *args: Any, **kwargs: Any) -> Any:
    return default_client().patch_json(service, path, *args, **kwargs)


def delete_json(service: str, path: str, **kwargs: Any) -> Any:
    return default_client().delete_json(service, path, **kwargs)
