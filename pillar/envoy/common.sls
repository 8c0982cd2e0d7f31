# The network team's pillar shared by every host (see pillar.example for every key).
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
        # Re-check an idle host every 5 s (Envoy's default is 60 s), so a host that just came up
        # is routable quickly.
        no_traffic_interval_ms: 5000
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

  # The service catalogue. foo and bar run on the service hosts behind their sidecar's ingress.
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
      # Short drains for the demo and tests; production keeps the formula's defaults
      # (sidecar 60/90 s, front 300/450 s).
      sidecar: {drain_time_s: 5, parent_shutdown_time_s: 10}
      front: {drain_time_s: 5, parent_shutdown_time_s: 10}
