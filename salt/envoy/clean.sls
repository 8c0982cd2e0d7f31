{#- Undo the formula on this host, in the reverse order of envoy: stop the scheduled highstate, stop
    publishing to the fleet report, leave discovery (so traffic drains away), drain and stop Envoy,
    then remove the config, its mesh TLS keys and certificates, and the bundles. The services'
    manifests, Envoy's logs and the envoy user stay: they belong to the service teams and the
    operators. Take `envoy` out of this host's top file first, or the next highstate puts it back. #}
{%- set tplroot = tpldir.split('/')[0] %}

include:
  - {{ tplroot }}.schedule.clean
  - {{ tplroot }}.report.clean
  - {{ tplroot }}.discovery.clean
  - {{ tplroot }}.service.clean
  - {{ tplroot }}.config.clean
  - {{ tplroot }}.identity.clean
  - {{ tplroot }}.bundle.clean
