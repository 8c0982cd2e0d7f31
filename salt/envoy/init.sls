{#- The whole formula, in the order data flows on a host: the envoy user, the bundle (envoy binary,
    config generator, restarter), its mesh TLS identities (keys and certificates, when
    envoy:mesh_tls is on), this host's config rendered from manifests and pillar, Envoy under
    its restarter (a changed bundle or config hot restarts it), discovery registration, this host's
    entry in the fleet report (the Salt mine), and the pull-based highstate schedule. envoy.clean
    undoes it in reverse order. #}
{%- set tplroot = tpldir.split('/')[0] %}

include:
  - {{ tplroot }}.user
  - {{ tplroot }}.bundle
  - {{ tplroot }}.identity
  - {{ tplroot }}.config
  - {{ tplroot }}.service
  - {{ tplroot }}.discovery
  - {{ tplroot }}.report
  - {{ tplroot }}.schedule
