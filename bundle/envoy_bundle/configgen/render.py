"""The Jinja2 side: one environment (StrictUndefined), two filters that keep YAML exact."""

import functools
import json
import os

import jinja2

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


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


@functools.lru_cache(maxsize=1)
def environment():
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["q"] = quote
    env.filters["dur"] = duration
    return env


def render(model):
    text = environment().get_template("bootstrap.yaml.j2").render(**model)
    return text if text.endswith("\n") else text + "\n"
