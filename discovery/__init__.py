"""
The discovery service: hosts check in with a TTL (Lyft's discovery API v1) and every Envoy
polls its clusters' endpoints over v3 REST EDS. Eventually consistent on purpose: active and
passive health checks in Envoy cover the gaps.
"""
