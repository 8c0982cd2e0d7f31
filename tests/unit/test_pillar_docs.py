"""docs/pillar.md documents every pillar key the formula reads (the resolved settings are the
truth: a key added to host_settings without a line in the doc fails here)."""

from pathlib import Path

from envoy_formula import host_settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "pillar.md").read_text()


def keys(prefix, mapping):
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from keys(f"{prefix}:{key}", value)
        else:
            yield f"{prefix}:{key}"


def test_every_key_the_formula_reads_is_documented():
    wanted = [
        *keys("envoy:lookup", host_settings.LOOKUP_DEFAULTS),
        *keys("envoy:schedule", host_settings.SCHEDULE_DEFAULTS),
        *(f"envoy:restart:{key}" for key in host_settings.RESTART_KEYS),
        *(f"envoy:restart:roles:{role}:{key}" for role, values in host_settings.RESTART_ROLE_DEFAULTS.items()
          for key in values),
        *keys("envoy:discovery", host_settings.DISCOVERY_DEFAULTS),
        *keys("envoy:report", host_settings.REPORT_DEFAULTS),
        *keys("envoy:mesh_tls", host_settings.MESH_TLS_DEFAULTS),
        "envoy:bundle:source", "envoy:bundle:sha256", "envoy:bundle:keep",
        "envoy:tofs:path_prefix", "envoy:tofs:files_switch", "envoy:tofs:source_files",
    ]
    missing = [key for key in wanted if f"`{key}" not in DOC]
    assert not missing, f"docs/pillar.md does not document {missing}"
