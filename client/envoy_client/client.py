"""
The client: name the service, get a response. Every call goes to the local Envoy's egress with
``Host: <service>``, carries the timeout/retry policy as Envoy router headers and the inbound
request's ids, and turns failures into errors a developer can act on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import requests
import requests.adapters
import urllib3.exceptions

from ._version import __version__
from .config import (
    CONFIG_ENV,
    DEFAULT_PATH,
    SERVICE_NAME,
    ClientConfig,
    Policy,
    ResolvedDefaults,
    load_config,
)
from .context import REQUEST_ID, current
from .errors import (
    ClientTimeoutError,
    EgressConnectionError,
    InvalidJSONError,
    NoEgressError,
    UnknownServiceError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .policy import ROUTER_HEADERS, EffectivePolicy, effective_policy

log = logging.getLogger("envoy_client")

FLAGS_HEADER = "x-envoy-response-flags"
_MISSING: Any = object()


class Client:
    """A client of the local Envoy's egress, with one shared connection pool.

    ``config``: a :class:`ClientConfig` (no lookup, no reload); ``config_path``: a client.json to
    read (reloaded when it changes); ``egress``: ``"host:port"`` with library defaults. With none
    of them, the lookup order applies (ENVOY_CLIENT_CONFIG, /etc/envoy/client.json, ENVOY_EGRESS,
    127.0.0.1:9001) and the file found, if any, is re-read when it changes (checked at most every
    ``reload_interval_s``; an invalid new file is logged and the previous configuration kept).

    ``pool_size``: connections kept open to Envoy (the most concurrent calls that reuse one);
    ``grace_s``: how much longer than Envoy's timeout the client waits for Envoy itself before
    :class:`ClientTimeoutError`; ``connect_timeout_s``: the connect timeout to the egress.
    A Client may be shared by threads.
    """

    def __init__(self, config: ClientConfig | None = None, *, config_path: str | os.PathLike[str] | None = None,
                 egress: str | None = None, pool_size: int = 32, grace_s: float = 1.0,
                 connect_timeout_s: float = 1.0, reload_interval_s: float = 5.0) -> None:
        if sum(x is not None for x in (config, config_path, egress)) > 1:
            raise TypeError("pass at most one of config, config_path and egress")
        self._explicit_path = os.fspath(config_path) if config_path is not None else None
        self._egress_arg = egress
        self._reload = config is None and egress is None and reload_interval_s > 0
        self._reload_interval = reload_interval_s
        self._lock = threading.Lock()
        self._config = config if config is not None else load_config(config_path, egress)
        self._fingerprint = self._file_fingerprint()
        self._checked_at = time.monotonic()
        self._resolved: dict[str, ResolvedDefaults] = {}
        self._grace_s = grace_s
        self._connect_timeout_s = connect_timeout_s
        self._session = requests.Session()
        # Never send mesh traffic to an HTTP proxy from the environment, nor use .netrc credentials.
        self._session.trust_env = False
        self._session.headers["User-Agent"] = f"envoy-client/{__version__} {requests.utils.default_user_agent()}"
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    # --- configuration ------------------------------------------------------------------------

    @property
    def config(self) -> ClientConfig:
        """The configuration in force (re-read first if its file changed)."""
        self._maybe_reload()
        return self._config

    def _watched_path(self) -> str | None:
        if self._explicit_path is not None:
            return self._explicit_path
        return os.environ.get(CONFIG_ENV) or DEFAULT_PATH

    def _file_fingerprint(self) -> tuple[int, int, int] | None:
        if not self._reload:
            return None
        path = self._watched_path()
        try:
            st = os.stat(path) if path else None
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size) if st else None

    def _maybe_reload(self) -> None:
        if not self._reload:
            return
        now = time.monotonic()
        if now - self._checked_at < self._reload_interval:
            return
        with self._lock:
            if now - self._checked_at < self._reload_interval:
                return
            self._checked_at = now
            fingerprint = self._file_fingerprint()
            if fingerprint == self._fingerprint:
                return
            try:
                config = load_config(self._explicit_path, self._egress_arg)
            except Exception as exc:  # keep serving with the last good configuration
                log.error("envoy_client: keeping the previous configuration: %s", exc)
                self._fingerprint = fingerprint
                return
            self._fingerprint = fingerprint
            self._config = config
            self._resolved = {}
            log.info("envoy_client: configuration reloaded from %s", config.source)

    def _defaults_for(self, service: str) -> ResolvedDefaults:
        resolved = self._resolved.get(service)
        if resolved is None:
            resolved = self._config.resolve(service)
            self._resolved[service] = resolved
        return resolved

    def policy(self, service: str, method: str = "GET", *, timeout_ms: int | None = None,
               per_try_timeout_ms: int | None = None, retries: int | None = None, retry_on: str | None = None,
               idempotent: bool | None = None) -> EffectivePolicy:
        """The policy a call with these arguments would send now (in the current inbound context),
        with the source of each value: for debugging and tests."""
        _check_service(service)
        self._maybe_reload()
        context = current()
        return effective_policy(self._defaults_for(service), method,
                                Policy(timeout_ms, per_try_timeout_ms, retries, retry_on), idempotent,
                                context.remaining_ms() if context else None, context.budget_ms if context else None)

    # --- calls --------------------------------------------------------------------------------

    def request(self, method: str, service: str, path: str, *, timeout_ms: int | None = None,
                per_try_timeout_ms: int | None = None, retries: int | None = None, retry_on: str | None = None,
                idempotent: bool | None = None, raise_for_status: bool = True,
                headers: Mapping[str, str] | None = None, **kwargs: Any) -> requests.Response:
        """Send ``method path`` to ``service`` through the egress; returns the ``requests.Response``.

        ``timeout_ms``, ``per_try_timeout_ms``, ``retries``, ``retry_on`` override the defaults for
        this call (clamped into the network team's bounds). ``idempotent=True`` lets a POST or PATCH
        be retried with the default retries. With ``raise_for_status`` (default) a 4xx/5xx raises
        :class:`UpstreamError` (or a subclass). Other keyword arguments go to ``requests``
        (``params``, ``data``, ``json``, ``files``, ``stream``, ``allow_redirects`` (default False)...).
        """
        _check_service(service)
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        if "timeout" in kwargs:
            raise TypeError("envoy_client sets the requests timeout itself: pass timeout_ms= (Envoy's timeout "
                            "for the call) instead of timeout=")
        self._maybe_reload()
        config = self._config
        context = current()
        policy = effective_policy(self._defaults_for(service), method,
                                  Policy(timeout_ms, per_try_timeout_ms, retries, retry_on), idempotent,
                                  context.remaining_ms() if context else None,
                                  context.budget_ms if context else None)
        send = dict(context.headers) if context else {}
        if headers:
            for name, value in headers.items():
                lname = name.lower()
                if lname in ROUTER_HEADERS:
                    raise ValueError(f"header {name} is set by envoy_client from timeout_ms, per_try_timeout_ms, "
                                     f"retries and retry_on (within the network team's bounds): pass those instead")
                if lname == "host":
                    raise ValueError("the Host header is the service name: pass the service instead")
                send[lname] = value
        if REQUEST_ID not in send:
            send[REQUEST_ID] = str(uuid.uuid4())
        send["host"] = service
        send.update(policy.headers())
        kwargs.setdefault("allow_redirects", False)
        read_timeout = policy.timeout_ms / 1000.0 + self._grace_s
        try:
            response = self._session.request(method.upper(), f"http://{config.egress}{path}", headers=send,
                                             timeout=(self._connect_timeout_s, read_timeout), **kwargs)
        except requests.exceptions.ConnectTimeout as exc:
            raise NoEgressError(service, config.address, config.port, config.source, exc) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise ClientTimeoutError(service, config.address, config.port, read_timeout, send[REQUEST_ID]) from exc
        except requests.exceptions.ConnectionError as exc:
            if _is_connect_failure(exc):
                raise NoEgressError(service, config.address, config.port, config.source, exc) from exc
            raise EgressConnectionError(service, config.address, config.port, send[REQUEST_ID], exc) from exc
        if raise_for_status and response.status_code >= 400:
            raise _upstream_error(service, method.upper(), path, response, send[REQUEST_ID], policy)
        return response

    def get(self, service: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", service, path, **kwargs)

    def head(self, service: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request("HEAD", service, path, **kwargs)

    def options(self, service: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request("OPTIONS", service, path, **kwargs)

    def post(self, service: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", service, path, **kwargs)

    def put(self, service: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", service, path, **kwargs)

    def patch(self, service: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", service, path, **kwargs)

    def delete(self, service: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", service, path, **kwargs)

    # --- JSON helpers -------------------------------------------------------------------------

    def request_json(self, method: str, service: str, path: str, body: Any = _MISSING, **kwargs: Any) -> Any:
        """Send ``body`` (when given) as JSON and return the decoded JSON answer (``None`` for an
        empty body). Errors raise as for :meth:`request`; a body that is not JSON raises
        :class:`InvalidJSONError`."""
        if body is not _MISSING:
            kwargs["json"] = body
        if "raise_for_status" in kwargs:
            raise TypeError("the JSON helpers always raise on 4xx/5xx: use request(..., raise_for_status=False) "
                            "to look at an error response")
        headers = {"accept": "application/json", **(kwargs.pop("headers", None) or {})}
        response = self.request(method, service, path, headers=headers, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise InvalidJSONError(service, method.upper(), path, response.status_code,
                                   response.headers.get("content-type", ""), response.text,
                                   response.request.headers.get(REQUEST_ID)) from None

    def get_json(self, service: str, path: str, **kwargs: Any) -> Any:
        return self.request_json("GET", service, path, **kwargs)

    def post_json(self, service: str, path: str, body: Any = _MISSING, **kwargs: Any) -> Any:
        return self.request_json("POST", service, path, body, **kwargs)

    def put_json(self, service: str, path: str, body: Any = _MISSING, **kwargs: Any) -> Any:
        return self.request_json("PUT", service, path, body, **kwargs)

    def patch_json(self, service: str, path: str, body: Any = _MISSING, **kwargs: Any) -> Any:
        return self.request_json("PATCH", service, path, body, **kwargs)

    def delete_json(self, service: str, path: str, **kwargs: Any) -> Any:
        return self.request_json("DELETE", service, path, **kwargs)

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_service(service: str) -> None:
    if not isinstance(service, str) or not SERVICE_NAME.fullmatch(service):
        raise ValueError(f"service must be a service name from the catalogue (lowercase letters, digits, '-' "
                         f"and '_', starting with a letter), not {service!r}")


def _is_connect_failure(exc: BaseException) -> bool:
    """Did the connection to the egress fail to open (as opposed to break later)?"""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)):
            return True
        reason = getattr(item, "reason", None)
        stack.extend([item.__cause__, item.__context__, reason if isinstance(reason, BaseException) else None])
        stack.extend(arg for arg in item.args if isinstance(arg, BaseException))
    return False


def parse_flags(response: requests.Response) -> tuple[str, ...] | None:
    """Envoy's response flags from the header the egress adds; ``()`` for none, ``None`` when the
    header is absent."""
    value = response.headers.get(FLAGS_HEADER)
    if value is None:
        return None
    value = value.strip()
    if value in ("", "-"):
        return ()
    return tuple(flag.strip() for flag in value.split(",") if flag.strip())


def _upstream_error(service: str, method: str, path: str, response: requests.Response, sent_request_id: str,
                    policy: EffectivePolicy) -> UpstreamError:
    flags = parse_flags(response)
    request_id = response.headers.get(REQUEST_ID) or sent_request_id
    try:
        body = response.text[:2000]
    except Exception:  # a streamed body that cannot be read any more
        body = ""
    args = (service, method, path, response.status_code, response.reason or "", flags, request_id, body, response)
    if flags and "NR" in flags:
        return UnknownServiceError(*args, detail=(
            f"The egress has no route for service {service!r}: the egress only routes to the upstreams "
            f"declared in this host's service manifests (and listed in the pillar's catalogue)"))
    if response.status_code == 504 and flags and "UT" in flags:
        return UpstreamTimeoutError(*args, timeout_ms=policy.timeout_ms, per_try_timeout_ms=policy.per_try_timeout_ms,
                                    retries=policy.retries, timeout_source=policy.sources.get("timeout_ms", ""))
    if flags == ("URX",):
        return UpstreamError(*args, detail=(f"The status came from the upstream service itself, on the last of "
                                            f"{policy.retries + 1} tries"))
    return UpstreamError(*args)


# --- the shared default client ------------------------------------------------------------------

_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client used by the module-level functions (created on first use)."""
    global _default
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                _default = Client()
            client = _default
    return client


def set_default_client(client: Client | None) -> None:
    """Replace the process-wide client (``None``: create it again on next use)."""
    global _default
    with _default_lock:
        old, _default = _default, client
    if old is not None and old is not client:
        old.close()
