"""Reading and schema-checking the three inputs: manifests, pillar sections, host facts."""

import difflib
import os
from dataclasses import dataclass

import yaml

from .schema import INVALID, Where
from .specs import DISCOVERY, FORMULA_KEYS, HOST, MANIFEST, MANIFEST_SECTIONS, PILLAR_SECTIONS

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_BaseLoader):
    """safe_load that refuses duplicate keys: the second of two `timeout_ms:` must not win silently."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class Manifest:
    path: str
    data: dict

    @property
    def service(self):
        return self.data["service"]


def read_manifest_dir(directory):
    """Every ``*.yaml`` in ``directory`` as (path, text), sorted by name; hidden files skipped."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".yaml") and not name.startswith("."):
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    out.append((path, handle.read()))
            except OSError as exc:  # reported by parse_manifest with the other problems
                out.append((path, exc))
    return out


def parse_manifest(path, text, problems):
    """A Manifest with defaults filled in, or None after reporting what is wrong with it."""
    where = Where.manifest(problems, path)
    if isinstance(text, OSError):
        where.fail([], f"cannot be read: {text.strerror}")
        return None
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        where.fail([], "YAML does not parse: " + yaml_error_text(exc))
        return None
    if data is None:
        where.fail([], "is empty; a manifest needs at least `service:` and one of " + ", ".join(MANIFEST_SECTIONS))
        return None
    cleaned = MANIFEST.check(data, [], where)
    if cleaned is INVALID:
        return None
    if not any(cleaned.get(section) for section in MANIFEST_SECTIONS):
        where.fail([], "declares none of " + ", ".join(MANIFEST_SECTIONS) + ": nothing for Envoy to do")
        return None
    return Manifest(path, cleaned)


def yaml_error_text(exc):
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" + (f" ({context})" if context else "")


def check_pillar(pillar, problems):
    """{section: cleaned value or INVALID} for the sections the generator owns."""
    where = Where.pillar(problems)
    if pillar is None:
        pillar = {}
    if not isinstance(pillar, dict):
        where.fail([], "must be a mapping")
        return {name: INVALID for name in PILLAR_SECTIONS}
    out = {}
    for name, field in PILLAR_SECTIONS.items():
        if pillar.get(name) is not None:
            out[name] = field.spec.check(pillar[name], [name], where)
        elif field.has_default:
            out[name] = field.check_default([name], where)
        else:
            out[name] = None
    check_section_typos(pillar, where)
    out["discovery"] = check_discovery(pillar.get("discovery"), where)
    return out


def check_discovery(discovery, where):
    """{addresses, retry_port} from `envoy:discovery`, None when it names no address. Only these
    keys are the generator's; the others are the formula's and are not looked at."""
    if not isinstance(discovery, dict) or "address" not in discovery:
        return None
    out = {}
    for key, name in (("address", "addresses"), ("retry_port", "retry_port")):
        field = DISCOVERY.fields[key]
        if discovery.get(key) is None and field.has_default:
            out[name] = field.check_default(["discovery", key], where)
        else:
            out[name] = field.spec.check(discovery.get(key), ["discovery", key], where)
    return INVALID if INVALID in out.values() else out


def check_section_typos(pillar, where):
    """Keys the generator does not own are the formula's and pass, unless one looks like a
    misspelt section of ours (`rotes:` must not silently drop every route)."""
    for key in sorted(pillar, key=str):
        if key in PILLAR_SECTIONS or key in FORMULA_KEYS or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key, list(PILLAR_SECTIONS), n=1, cutoff=0.75)
        if close:
            where.fail([key], f"is not a known section (did you mean {close[0]}?)")


def check_host(host, problems):
    cleaned = HOST.check(host if host is not None else {}, [], Where.host(problems))
    return None if cleaned is INVALID else cleaned
