{#- The whole formula: the envoy user, the bundle, this host's config, Envoy under its restarter,
    service discovery (registration heartbeats; the discovery service on the hosts pillar names),
    and the pull-based highstate schedule. Config requires the bundle; the service watches both, so
    a new bundle or a changed config hot restarts Envoy, and nothing else does. #}
{%- set tplroot = tpldir.split('/')[0] %}

include:
  - {{ tplroot }}.user
  - {{ tplroot }}.bundle
  - {{ tplroot }}.config
  - {{ tplroot }}.service
  - {{ tplroot }}.discovery
  - {{ tplroot }}.schedule
