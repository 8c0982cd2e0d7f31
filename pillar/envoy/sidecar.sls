# Service hosts: a sidecar in front of each local app (ingress) and for its calls out (egress on
# 127.0.0.1:9001). What runs there comes from the service manifests in manifest_dir.
envoy:
  roles: [sidecar]
