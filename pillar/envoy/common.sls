# The network team's pillar shared by every host (every key: pillar.example and docs/pillar.md).
# This tree drives `make demo` and the tests, where every "host" is a sandbox on one machine: the
# values marked "demo" are there to make them fast; keep the formula's defaults in production.
envoy:
  defaults:
    upstreams:
      connect_timeout_ms: 250
      timeout_ms: 15000
      retries: 1
      retry_on: 5xx,connect-failure,refused-stream
      health_check:
        path: /healthcheck
        timeout_ms: 2000
        interval_ms: 5000
        no_traffic_interval_ms: 5000   # idle cluster, host not healthy yet (the default)
        unhealthy_threshold: 2
        healthy_threshold: 2

  overridable:
    upstreams:
      timeout_ms: {min: 10, max: 60000}
      per_try_timeout_ms: {min: 10, max: 60000}
      retries: {min: 0, max: 3}
      circuit_breakers:
        max_requests: {min: 1, max: 10000}
    ingress:
      timeout_ms: {min: 100, max: 60000}

  # The service catalogue: where callers reach each service. An address is a service host's
  # *sidecar ingress* (the manifest's ingress.port on that host), never the app's own port: every
  # call goes Envoy to Envoy. demo: 127.0.0.1, because every sandbox host shares this machine's
  # loopback; on a real fleet list each host's address (or use discovery: eds), e.g.
  #   foo: {hosts: ['10.0.1.21:9211', '10.0.1.22:9211']}
  services:
    foo:
      hosts: [127.0.0.1:9211]
    bar:
      hosts: [127.0.0.1:9212]

  observability:
    access_log:
      enabled: true
    request_id: true

  restart:
    roles:
      # demo: short drains so a demo restart settles in seconds. Production keeps the formula's
      # defaults (sidecar 60/90 s, front 300/450 s: docs/pillar.md).
      sidecar: {drain_time_s: 5, parent_shutdown_time_s: 10}
      front: {drain_time_s: 5, parent_shutdown_time_s: 10}
