{#- Leave discovery: stop the heartbeat, deregister this host's services (callers' Envoys stop
    sending to it at their next EDS refresh, and their health checks see it failing once the
    service clean fails its health check), stop the discovery service where it ran, and remove
    the registration token and token keys files. #}
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

# The proofs go last: deregistering above still needed the token.
envoy-discovery-clean-token-absent:
  envoy.discovery_secret_absent:
    - name: envoy-discovery-token
    - kind: token
{%- if envoy.discovery.url %}
    - require:
      - envoy: envoy-discovery-clean-deregistered
{%- endif %}

envoy-discovery-server-clean-keys-absent:
  envoy.discovery_secret_absent:
    - name: envoy-discovery-keys
    - kind: keys
    - require:
      - envoy: envoy-discovery-server-clean-dead
