"""
A small declarative schema: types, ranges, required and unknown fields, with messages that name
the field path and what is allowed. A spec's ``check`` returns the cleaned value (defaults
filled in) or ``INVALID`` after reporting every problem it found below it.
"""

import copy
import difflib
import ipaddress
import re

INVALID = object()
_MISSING = object()


class Where:
    """Where a value came from: formats ``manifest <file>: a.b[1].c`` or ``pillar envoy:a:b[1]``."""

    def __init__(self, problems, prefix, sep):
        self.problems = problems
        self.prefix = prefix
        self.sep = sep

    @classmethod
    def manifest(cls, problems, path):
        return cls(problems, f"manifest {path}: ", ".")

    @classmethod
    def pillar(cls, problems):
        return cls(problems, "pillar envoy:", ":")

    @classmethod
    def host(cls, problems):
        return cls(problems, "host facts: ", ".")

    @classmethod
    def silent(cls):
        """Checks whose problems were already reported (a default standing in for a bad value)."""
        from .errors import Problems

        return cls(Problems(), "", ".")

    def field(self, path):
        out = ""
        for part in path:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += (self.sep if out else "") + str(part)
        return out

    def fail(self, path, message, value=_MISSING, secret=False):
        shown = ""
        if value is not _MISSING and path:
            shown = "=<redacted>" if secret else "=" + show(value)
        field = self.field(path)
        label = self.prefix + field if field else self.prefix.rstrip()
        self.problems.messages.append(f"{label}{shown} {message}")


def show(value):
    """A short, single-line rendering of a bad value for a message."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value):
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "empty"}.get(type(value), type(value).__name__)


class Spec:
    doc = ""

    def check(self, value, path, where):
        raise NotImplementedError


class Int(Spec):
    """An integer in [min, max]. ``tunable``: a service may set it within the network team's bounds."""

    def __init__(self, min=None, max=None, tunable=False, doc=""):
        self.min, self.max, self.tunable, self.doc = min, max, tunable, doc

    def check(self, value, path, where):
        if isinstance(value, bool) or not isinstance(value, int):
            where.fail(path, f"must be an integer{self.range_text()}, not {type_name(value)}", value)
            return INVALID
        if self.min is not None and value < self.min:
            where.fail(path, f"is below the minimum {self.min}", value)
            return INVALID
        if self.max is not None and value > self.max:
            where.fail(path, f"is above the maximum {self.max}", value)
            return INVALID
        return value

    def range_text(self):
        if self.min is not None and self.max is not None:
            return f" from {self.min} to {self.max}"
        return f" >= {self.min}" if self.min is not None else ""


class Port(Int):
    def __init__(self, doc=""):
        super().__init__(1, 65535, doc=doc)


class Number(Int):
    """An integer or a decimal number in [min, max]."""

    def check(self, value, path, where):
        if isinstance(value, bool) or not isinstance(value, int | float):
            where.fail(path, f"must be a number{self.range_text()}, not {type_name(value)}", value)
            return INVALID
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            where.fail(path, f"must be{self.range_text()}", value)
            return INVALID
        return value


class Bool(Spec):
    def check(self, value, path, where):
        if not isinstance(value, bool):
            where.fail(path, f"must be true or false, not {type_name(value)}", value)
            return INVALID
        return value


class Str(Spec):
    """A non-empty string, optionally matching ``pattern`` (described by ``shape``) or one of ``choices``."""

    def __init__(self, pattern=None, shape=None, choices=None, secret=False, max_len=4096, doc=""):
        self.regex = re.compile(pattern) if pattern else None
        self.shape, self.choices, self.secret, self.max_len, self.doc = shape, choices, secret, max_len, doc

    def check(self, value, path, where):
        if not isinstance(value, str):
            where.fail(path, f"must be a string, not {type_name(value)}", value, self.secret)
            return INVALID
        if self.choices is not None and value not in self.choices:
            where.fail(path, "must be one of " + ", ".join(self.choices), value, self.secret)
            return INVALID
        if not value or len(value) > self.max_len:
            where.fail(path, f"must be a non-empty string of at most {self.max_len} characters", value, self.secret)
            return INVALID
        if self.regex and not self.regex.fullmatch(value):
            where.fail(path, f"must be {self.shape or 'like ' + self.regex.pattern}", value, self.secret)
            return INVALID
        return value


class IPv4(Str):
    def check(self, value, path, where):
        value = super().check(value, path, where)
        if value is INVALID:
            return value
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            where.fail(path, "must be an IPv4 address such as 127.0.0.1", value)
            return INVALID
        return value


class HostPort(Str):
    """``host:port`` where host is an IPv4 address (``ip_only``) or a DNS name."""

    NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")

    def __init__(self, ip_only=False, doc=""):
        super().__init__(doc=doc)
        self.ip_only = ip_only

    def check(self, value, path, where):
        value = super().check(value, path, where)
        if value is INVALID:
            return value
        host, _, port = value.rpartition(":")
        kind = "an IPv4 address" if self.ip_only else "an IPv4 address or DNS name"
        if not port.isdigit() or not 1 <= int(port) <= 65535 or not self.host_ok(host):
            where.fail(path, f"must be host:port with {kind} and a port from 1 to 65535", value)
            return INVALID
        return value

    def host_ok(self, host):
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return not self.ip_only and bool(self.NAME.fullmatch(host))


class Field:
    def __init__(self, spec, required=False, default=_MISSING):
        self.spec, self.required, self.default = spec, required, default

    @property
    def has_default(self):
        return self.default is not _MISSING

    def check_default(self, path, where):
        # Defaults go through the spec too, so nested maps get their own defaults filled.
        return self.spec.check(copy.deepcopy(self.default), path, where)


class Map(Spec):
    """A mapping with known fields. ``one_of``: groups of which exactly one field must be set.

    One mistake must not hide the others: an unknown field is reported and the known ones are still
    checked, and a bad optional field is reported and left at its default, so the checks that look
    across fields and files (bounds, the catalogue, ports) still run. Only a map whose required or
    one-of fields are missing or bad is INVALID as a whole."""

    def __init__(self, fields, one_of=(), doc=""):
        self.fields, self.one_of, self.doc = fields, one_of, doc

    def check(self, value, path, where):
        if not isinstance(value, dict):
            where.fail(path, f"must be a mapping, not {type_name(value)}", value)
            return INVALID
        ok, out = True, {}
        for key in sorted(value, key=str):
            if key not in self.fields:
                where.fail(list(path) + [key], unknown_field_text(key, self.fields))
        essential = {name for group in self.one_of for name in group}
        for name, field in self.fields.items():
            # `key:` with nothing after it (None) means not set, as Salt pillars often have it.
            if value.get(name) is not None:
                cleaned = field.spec.check(value[name], list(path) + [name], where)
                if cleaned is not INVALID:
                    out[name] = cleaned
                elif field.required or name in essential:
                    ok = False
                elif field.has_default:  # reported; the rest is checked as if it were not set
                    out[name] = field.check_default(list(path) + [name], Where.silent())
            elif field.required:
                where.fail(list(path) + [name], "is required")
                ok = False
            elif field.has_default:
                out[name] = field.check_default(list(path) + [name], where)
        for group in self.one_of:
            present = [name for name in group if name in value]
            if len(present) != 1:
                what = "set: " + ", ".join(present) if present else "none is set"
                where.fail(path, f"needs exactly one of {', '.join(group)} ({what})")
                ok = False
        return out if ok else INVALID


def unknown_field_text(key, fields):
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"is not a known field{hint}; known fields: {', '.join(fields)}"


class CheckedList(list):
    """The valid items of a checked list; ``positions`` are their indexes in the input, so messages
    about later checks still name the entry the user wrote (routes[3], not routes[2])."""

    def __init__(self, items, positions, length):
        super().__init__(items)
        self.positions = list(positions)
        self.incomplete = len(self.positions) < length  # some entries were bad (and reported)


def indexed(items):
    """(index in the input, item) of a checked list (enumerate for a plain one)."""
    return zip(getattr(items, "positions", range(len(items))), items, strict=True)


class ListOf(Spec):
    """A list of one spec. A bad entry is reported and left out; the others are still checked."""

    def __init__(self, item, max_len=None, doc=""):
        self.item, self.max_len, self.doc = item, max_len, doc

    def check(self, value, path, where):
        if not isinstance(value, list):
            where.fail(path, f"must be a list, not {type_name(value)}", value)
            return INVALID
        if self.max_len is not None and len(value) > self.max_len:
            where.fail(path, f"has {len(value)} entries, more than the maximum {self.max_len}")
            return INVALID
        cleaned = [(i, self.item.check(item, list(path) + [i], where)) for i, item in enumerate(value)]
        kept = [(i, c) for i, c in cleaned if c is not INVALID]
        return CheckedList([c for _, c in kept], [i for i, _ in kept], len(value))


class OneOrList(Spec):
    """One value, or a non-empty list of distinct values, of one spec; checked into a list."""

    def __init__(self, item, max_len, doc=""):
        self.item, self.max_len, self.doc = item, max_len, doc

    def check(self, value, path, where):
        if not isinstance(value, list):
            checked = self.item.check(value, path, where)
            return INVALID if checked is INVALID else [checked]
        if not value:
            where.fail(path, "must not be an empty list")
            return INVALID
        items = ListOf(self.item, self.max_len).check(value, path, where)
        if items is INVALID or items.incomplete:
            return INVALID
        seen = set()
        for index, item in indexed(items):
            if item in seen:
                where.fail(list(path) + [index], "is listed twice", item)
                return INVALID
            seen.add(item)
        return list(items)


class CheckedDict(dict):
    """The valid entries of a checked mapping; ``invalid``: names of entries already reported as
    bad, so a reference to one is not reported again as missing."""

    def __init__(self, items, invalid):
        super().__init__(items)
        self.invalid = set(invalid)


def known_but_invalid(mapping, name):
    return name in getattr(mapping, "invalid", ())


class DictOf(Spec):
    """A mapping of names (matching ``key``) to values of one spec, e.g. the service catalogue. A bad
    entry is reported and left out; the others are still checked."""

    def __init__(self, key, value, doc=""):
        self.key, self.value, self.doc = key, value, doc

    def check(self, value, path, where):
        if not isinstance(value, dict):
            where.fail(path, f"must be a mapping, not {type_name(value)}", value)
            return INVALID
        out, invalid = {}, []
        for name in sorted(value, key=str):
            if self.key.check(name, list(path) + [name], where) is INVALID:
                invalid.append(name)
                continue
            cleaned = self.value.check(value[name], list(path) + [name], where)
            if cleaned is INVALID:
                invalid.append(name)
            else:
                out[name] = cleaned
        return CheckedDict(out, invalid)


def tunable_paths(spec, prefix=()):
    """Every tunable leaf below a Map/ListOf spec, as tuples of field names."""
    if isinstance(spec, ListOf):
        return tunable_paths(spec.item, prefix)
    if isinstance(spec, Map):
        out = []
        for name, field in spec.fields.items():
            out.extend(tunable_paths(field.spec, prefix + (name,)))
        return out
    if isinstance(spec, Int) and spec.tunable:
        return [prefix]
    return []
