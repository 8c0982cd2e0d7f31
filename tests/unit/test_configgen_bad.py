"""
The bad-input corpus (tests/bad/*.yaml, each one mistake over a good base): every case must be
refused with a message naming the file and the field, and must leave the config on disk as it was
(through the CLI's --out, the path the module's temp-file-and-rename also takes).
"""

import json
import os

import pytest
from envoy_bundle.configgen import ConfigError, generate
from envoy_bundle.configgen.cli import main as configgen_main
from envoy_bundle.configgen.inputs import read_manifest_dir

from tests.helpers.configgen_cases import BAD_CASES, bad_case


def test_the_corpus_is_big_enough():
    assert len(BAD_CASES) >= 25


def test_the_base_is_good(tmp_path):
    pillar, host, _, _ = bad_case(None, tmp_path / "manifest.d")
    assert "ingress_foo" in generate(read_manifest_dir(tmp_path / "manifest.d"), pillar, host)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_naming_file_and_field(case, tmp_path):
    manifest_dir = tmp_path / "manifest.d"
    pillar, host, expect, absent = bad_case(case, manifest_dir)
    assert expect, f"tests/bad/{case}.yaml has no expected message"
    with pytest.raises(ConfigError) as caught:
        generate(read_manifest_dir(str(manifest_dir)), pillar, host)
    messages = caught.value.messages
    for wanted in expect:
        assert any(wanted in message for message in messages), f"{wanted!r} not in {messages}"
    for secret in absent:
        assert secret not in "\n".join(messages)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_leaves_the_config_on_disk_unchanged(case, tmp_path, capsys):
    good_pillar, good_host, _, _ = bad_case(None, tmp_path / "good.d")
    out = tmp_path / "etc" / "envoy.yaml"
    out.parent.mkdir()
    configgen_main(["--manifest-dir", str(tmp_path / "good.d"), "--facts", _facts(tmp_path / "good.json",
                    good_pillar, good_host), "--out", str(out)])
    before, before_stat = out.read_bytes(), os.stat(out)
    capsys.readouterr()

    manifest_dir = tmp_path / "manifest.d"
    pillar, host, expect, absent = bad_case(case, manifest_dir)
    code = configgen_main(["--manifest-dir", str(manifest_dir), "--facts", _facts(tmp_path / "bad.json", pillar, host),
                           "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == 2
    for wanted in expect:
        assert any(wanted in line for line in stderr.splitlines()), stderr
    for secret in absent:
        assert secret not in stderr
    assert out.read_bytes() == before
    assert os.stat(out).st_mtime_ns == before_stat.st_mtime_ns
    assert sorted(os.listdir(out.parent)) == ["envoy.yaml"]  # no temp file left behind


def _facts(path, pillar, host):
    path.write_text(json.dumps({"pillar": pillar, "host": host}))
    return str(path)
