"""
The Envoy bundle: the envoy binary, the config generator with its templates and the restarter,
built together (``envoy-bundle build``) and installed as one release on every host.

Inside a bundle this package lives under ``lib/envoy_bundle``; ``bin/envoy-configgen`` and
``bin/envoy-restarter`` put that ``lib/`` first on ``sys.path``.
"""
