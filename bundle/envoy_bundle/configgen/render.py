"""The Jinja2 side: one environment (StrictUndefined), two filters that keep YAML exact.

Compiling the templates is most of a render's time (about 130 of 150 ms); with the environment
variable ``ENVOY_CONFIGGEN_CACHE_DIR`` set (the formula sets it), Jinja keeps the compiled templates
there between runs. Each entry is checked against its template's source and the Python version, so
a new bundle or interpreter simply compiles again.
"""

import functools
import json
import os

import jinja2

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
CACHE_DIR_ENV = "ENVOY_CONFIGGEN_CACHE_DIR"


def quote(value):
    """Any string as a double-quoted YAML scalar (JSON string syntax is valid YAML)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return json.dumps(value)


def duration(ms):
    """Milliseconds as an Envoy duration string, always three decimals: 250 -> 0.250s."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise TypeError(f"expected milliseconds as an integer, got {ms!r}")
    return f"{ms // 1000}.{ms % 1000:03d}s"


def bytecode_cache():
    """Jinja's file cache in ``$ENVOY_CONFIGGEN_CACHE_DIR`` (created private), or None."""
    directory = os.environ.get(CACHE_DIR_ENV)
    if not directory:
        return None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return None  # a cache is an optimisation: render without it
    return jinja2.FileSystemBytecodeCache(directory)


@functools.lru_cache(maxsize=1)
def environment():
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        bytecode_cache=bytecode_cache(),
    )
    env.filters["q"] = quote
    env.filters["dur"] = duration
    return env


def render(model):
    text = environment().get_template("bootstrap.yaml.j2").render(**model)
    return text if text.endswith("\n") else text + "\n"
