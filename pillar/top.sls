# Example pillar for the envoy formula, used by `make demo` and the tests: one front (edge) host
# and service hosts running sidecars. Real fleets target by their own naming or grains.
base:
  '*':
    - envoy.common
    # {source, sha256} of the bundle to run; `make demo` and the tests write it after building one.
    - envoy.bundle
    - ignore_missing: true
  'front*':
    - envoy.front
  'svc*':
    - envoy.sidecar
  # Per-host settings last, so they win: sandbox root, admin port, base id (demo and tests).
  '{{ grains["id"] }}':
    - hosts.{{ grains["id"] }}
    - ignore_missing: true
