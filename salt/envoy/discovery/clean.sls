{#- Leave discovery: stop the heartbeat, deregister this host's services (callers' Envoys stop
    sending to it at their next EDS refresh, and their health checks see it failing once the
    service clean fails its health check), and stop the discovery service where it ran. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

envoy-discovery-clean-schedule-absent:
  schedule.absent:
    - name: envoy-discovery-register
    - persist: true
    - offline: {{ envoy.discovery.register.schedule_offline | tojson }}

envoy-discovery-clean-cron-file-absent:
  file.absent:
    - name: {{ (envoy.cron_dir ~ '/envoy-formula-discovery') | tojson }}

{%- if envoy.discovery.url %}

envoy-discovery-clean-deregistered:
  envoy.deregistered:
    - name: envoy-discovery
    - require:
      - schedule: envoy-discovery-clean-schedule-absent
      - file: envoy-discovery-clean-cron-file-absent
{%- endif %}

envoy-discovery-server-clean-dead:
  envoy.discovery_server_dead:
    - name: envoy-discovery
