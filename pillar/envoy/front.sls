# The edge: routes are a pillar edit. `make demo` adds a route here and hot restarts the front.
envoy:
  roles: [front]
  listeners:
    front:
      http_port: 8080
  routes:
    - name: foo
      match: {prefix: /foo}
      service: foo
      timeout_ms: 5000
