"""
Who may register what (docs/discovery.md, "Who may register what"). With ``--auth audit`` or
``--auth enforce`` every registration and deregistration must carry a registration token
(``Authorization: Bearer <token>``, issued by the Salt master: ``envoy_formula.discovery_tokens``)
whose minion may register that service at that address, sent from that address. Operator
endpoints (sweeps, expiry) take an operator token, or a caller on the server's own loopback.

- ``enforce``: anything else is refused with 403 and a JSON body saying why, counted in
  ``discovery_auth_refused_total{reason}``;
- ``audit``: the same checks, counted in ``discovery_auth_audited_total{reason}`` and logged, but the
  request is served: a live fleet switches on without dropping a registration, and the counter
  shows which hosts still lack a good token before ``enforce``;
- ``off``: no check (a token sent anyway is ignored).

The keys file is re-read when it changes (checked at most once a second), so keys rotate without
a restart; a file that turns unreadable keeps the last good keys (and logs why). Neither tokens
nor keys are ever logged.
"""

import ipaddress
import logging
import os
import time

from envoy_formula import discovery_tokens as tokens

log = logging.getLogger("discovery.auth")

MODES = ("off", "audit", "enforce")
RELOAD_CHECK_S = 1.0
LOG_EVERY_S = 60.0  # one log line per (peer, operation, service, reason) a minute: audit mode is loud
LOG_MEMORY = 10_000


class AuthFailure(Exception):
    def __init__(self, reason, message, minion=None):
        super().__init__(message)
        self.reason, self.minion = reason, minion


def bearer(request):
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def loopback(peer):
    try:
        return ipaddress.ip_address(str(peer)).is_loopback
    except ValueError:
        return False


class Authenticator:
    def __init__(self, mode="off", keys_file=None, peer_check=True, clock=time.time, metrics=None):
        if mode not in MODES:
            raise ValueError(f"auth mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode, self.keys_file, self.peer_check, self.clock, self.metrics = \
            mode, keys_file, peer_check, clock, metrics
        self._keys, self._stamp, self._checked = {}, None, 0.0
        self._logged = {}
        if mode != "off":
            if not keys_file:
                raise tokens.KeysError(f"--auth {mode} needs --auth-keys-file")
            self._load()  # fail at start on a missing or broken file

    # --- keys -------------------------------------------------------------------------------

    def _load(self):
        _, keys = tokens.read_keys(self.keys_file)
        stat = os.stat(self.keys_file)
        self._keys, self._stamp = keys, (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def keys(self):
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            try:
                stat = os.stat(self.keys_file)
                if (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self._stamp:
                    self._load()
                    log.warning("auth: keys reloaded from %s (%d key(s))", self.keys_file, len(self._keys))
            except (OSError, tokens.KeysError) as exc:
                log.error("auth: keeping the previous keys: %s", exc)
        return self._keys

    # --- checks -----------------------------------------------------------------------------

    def _claims(self, request, role):
        try:
            claims = tokens.verify(bearer(request), self.keys(), self.clock())
        except tokens.TokenError as exc:
            raise AuthFailure(exc.reason, str(exc)) from None
        if claims["role"] != role:
            raise AuthFailure("role", f"a token of role {claims['role']} cannot be used here (needs {role})",
                              claims["sub"])
        return claims

    def _check_host(self, request, service, ip):
        claims = self._claims(request, "host")
        minion, peer = claims["sub"], request.remote
        if not tokens.service_allowed(claims, service):
            raise AuthFailure("service", f"minion {minion} may not register service {service} (its pillar "
                                         f"envoy:discovery:auth:services allows {claims['svc'] or 'nothing'})", minion)
        if not tokens.address_allowed(claims, ip):
            raise AuthFailure("address", f"minion {minion} may not register address {ip} (its token allows "
                                         f"{', '.join(claims['ips']) or 'none'})", minion)
        if self.peer_check and not tokens.same_address(ip, peer):
            raise AuthFailure("address", f"address {ip} is not the address this request came from ({peer}): a host "
                                         "registers only itself", minion)
        if not self.peer_check and claims.get("ipsrc") != "pillar":
            raise AuthFailure("address", f"minion {minion}'s addresses are self-reported (grains); without the peer "
                                         "check only addresses pinned in pillar envoy:discovery:auth:addresses count",
                              minion)
        return minion

    def _check_operator(self, request):
        if loopback(request.remote):
            return "loopback"
        return self._claims(request, "operator")["sub"]

    def refusal(self, request, operation, service=None, ip=None):
        """None when the request may go on (verified, audited, or auth off); else the reason and
        message for a 403."""
        if self.mode == "off":
            return None
        try:
            if operation == "operator":
                self._check_operator(request)
            else:
                self._check_host(request, service, ip)
        except AuthFailure as failure:
            return self._failed(request, operation, service, ip, failure)
        self._count("discovery_auth_verified_total")
        return None

    def _failed(self, request, operation, service, ip, failure):
        audit = self.mode == "audit"
        self._count("discovery_auth_audited_total" if audit else "discovery_auth_refused_total", reason=failure.reason)
        key = (request.remote, operation, service, failure.reason)
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            if len(self._logged) >= LOG_MEMORY:
                self._logged.clear()
            self._logged[key] = now
            log.warning("auth %s: %s %s%s from %s%s: %s (%s)", "audit, accepted anyway" if audit else "refused",
                        operation, service or request.path, f" at {ip}" if ip else "", request.remote,
                        f" (minion {failure.minion})" if failure.minion else "", failure, failure.reason)
        return None if audit else failure

    def _count(self, name, **labels):
        if self.metrics is not None:
            self.metrics.inc(name, **labels)
