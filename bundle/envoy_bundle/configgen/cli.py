"""
``envoy-configgen``: render this host's Envoy config.

    envoy-configgen --manifest-dir /etc/envoy/manifest.d --facts facts.json [--out envoy.yaml]
    echo '{"pillar": {...}, "host": {...}}' | envoy-configgen --manifest-dir DIR --facts -
    envoy-configgen --manifest-dir DIR --facts - --output json

``--facts`` is one JSON document: ``pillar`` (the pillar ``envoy`` dict) and ``host`` (node_id,
admin_port, log_dir, ...; see docs/manifest.md). The YAML goes to stdout or, written atomically,
to ``--out``. ``--output json`` prints instead every file of the host's config mode and the
effective config to validate (``outputs.py``); the Salt module uses it. Exit 0 on success; 2 with
one message per line on stderr when an input is bad.
"""

import argparse
import json
import os
import sys
import tempfile

from .errors import ConfigError
from .generate import generate_from_dir, generate_outputs_from_dir

EXIT_BAD_INPUT = 2


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="envoy-configgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-dir", required=True, help="directory of service manifests (*.yaml)")
    parser.add_argument("--facts", default="-", help="JSON file with {pillar, host}, or - for stdin")
    parser.add_argument("--out", help="write the config here (atomically) instead of stdout")
    parser.add_argument("--output", choices=["yaml", "json"], default="yaml",
                        help="yaml: the effective config; json: every file of the host's config mode")
    return parser.parse_args(argv)


def read_facts(source):
    """(pillar, host) from the facts JSON; ConfigError when it is not what we expect."""
    try:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
        facts = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"facts {source}: cannot read JSON: {exc}"]) from exc
    if not isinstance(facts, dict) or set(facts) - {"pillar", "host"}:
        raise ConfigError([f"facts {source}: must be a JSON object with the keys pillar and host"])
    return facts.get("pillar") or {}, facts.get("host") or {}


def write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        pillar, host = read_facts(args.facts)
        if args.output == "json":
            sys.stdout.write(json.dumps(generate_outputs_from_dir(args.manifest_dir, pillar, host), sort_keys=True))
            return 0
        text = generate_from_dir(args.manifest_dir, pillar, host)
    except ConfigError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out:
        write_atomically(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
