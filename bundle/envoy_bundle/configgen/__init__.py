"""
The config generator: (service manifests, pillar ``envoy`` data, host facts) -> an Envoy v3
bootstrap in YAML. Schema and policy checks run first and report every problem at once
(``ConfigError.messages``); rendering is deterministic, so equal inputs give equal bytes.

    from envoy_bundle.configgen import generate, ConfigError
    yaml_text = generate([(path, text), ...], pillar["envoy"], {"node_id": ..., "admin_port": ..., ...})
"""

from .errors import ConfigError
from .generate import generate, generate_from_dir

__all__ = ["ConfigError", "generate", "generate_from_dir"]
