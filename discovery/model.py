"""Registrations: validating what a host sends and the record that is stored."""

import ipaddress
import json
import re
from dataclasses import dataclass, field, replace

SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_TAGS_BYTES = 4096
MAX_TEXT = 256
REQUIRED_TAGS = ("az", "region", "instance_id")
WEIGHT_RANGE = (1, 100)


class InvalidRegistration(ValueError):
    """A registration refused as a whole; ``field`` names the offending field."""

    def __init__(self, field_name, message):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Host:
    service: str
    ip_address: str
    port: int
    revision: str
    service_repo_name: str
    tags: dict = field(default_factory=dict)
    last_check_in: float = 0.0

    @property
    def key(self):
        """Hosts are keyed by ip and port, so several instances can share one IP."""
        return endpoint_key(self.ip_address, self.port)

    def to_json(self):
        # Same text as json.dumps(asdict(self), sort_keys=True) without asdict's deep copy (a
        # third of a registration's CPU time).
        return json.dumps({"ip_address": self.ip_address, "last_check_in": self.last_check_in, "port": self.port,
                           "revision": self.revision, "service": self.service,
                           "service_repo_name": self.service_repo_name, "tags": self.tags},
                          sort_keys=True, separators=(",", ":"))

    def same_content(self, other):
        """True when only ``last_check_in`` differs: a plain heartbeat, nothing a reader sees changes."""
        return replace(other, last_check_in=self.last_check_in) == self

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


def endpoint_key(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def validate_service(name):
    if not isinstance(name, str) or not SERVICE_NAME.match(name):
        raise InvalidRegistration(
            "service", f"{name!r} is not a service name (letters, digits, '.', '_', '-'; at most 128)")
    return name


def validate_ip(value):
    if value is None or value == "":
        raise InvalidRegistration("ip", "missing")
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise InvalidRegistration("ip", f"{value!r} is not an IPv4 or IPv6 address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise InvalidRegistration("ip", f"{value!r} cannot receive traffic (unspecified or multicast)")
    return ip.compressed


def validate_port(value):
    if value is None or value == "":
        raise InvalidRegistration("port", "missing")
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidRegistration("port", f"{value!r} is not a port number (1-65535)")
    return int(text)


def validate_text(name, value):
    if value is None or value == "":
        raise InvalidRegistration(name, "missing")
    if len(value) > MAX_TEXT or not value.isprintable():
        raise InvalidRegistration(name, f"must be printable text of at most {MAX_TEXT} characters")
    return value


def validate_tags(raw):
    if raw is None or raw == "":
        raise InvalidRegistration("tags", "missing (a JSON object with az, region and instance_id)")
    if len(raw.encode()) > MAX_TAGS_BYTES:
        raise InvalidRegistration("tags", f"larger than {MAX_TAGS_BYTES} bytes")
    try:
        tags = json.loads(raw)
    except ValueError as exc:
        raise InvalidRegistration("tags", f"not valid JSON ({exc})") from None
    if not isinstance(tags, dict):
        raise InvalidRegistration("tags", "must be a JSON object")
    for name in REQUIRED_TAGS:
        value = tags.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            raise InvalidRegistration(f"tags.{name}", "missing or not a non-empty string")
    if "canary" in tags and not isinstance(tags["canary"], bool):
        raise InvalidRegistration("tags.canary", "must be true or false")
    if "load_balancing_weight" in tags:
        tags["load_balancing_weight"] = validate_weight(tags["load_balancing_weight"])
    return tags


def validate_weight(value):
    low, high = WEIGHT_RANGE
    # bool is an int in Python; a weight of `true` is a client bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRegistration("tags.load_balancing_weight", f"{value!r} is not an integer {low}-{high}")
    return value


def parse_registration(service, form, now):
    """A :class:`Host` from a registration form (a mapping of str), or InvalidRegistration."""
    return Host(
        service=validate_service(service),
        ip_address=validate_ip(form.get("ip")),
        port=validate_port(form.get("port")),
        revision=validate_text("revision", form.get("revision")),
        service_repo_name=validate_text("service_repo_name", form.get("service_repo_name")),
        tags=validate_tags(form.get("tags")),
        last_check_in=now,
    )


def parse_endpoint(text):
    """``ip:port``, ``[v6]:port`` or a bare ``ip`` (Lyft's original, one instance per IP) -> (ip, port|None)."""
    if text.startswith("["):
        ip, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        ip, port = text.split(":")
    else:
        ip, port = text, None
    return validate_ip(ip), (validate_port(port) if port is not None else None)
