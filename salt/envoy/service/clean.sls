{#- Stop Envoy without losing a request, after this host left discovery: the health check fails,
    the drain window passes, the listeners drain, then the restarter and every epoch stop. Then the
    unit (systemd) and the run dir go. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

include:
  - {{ tplroot }}.discovery.clean

envoy-service-clean-dead:
  envoy.dead:
    - name: envoy
    - require:
      - sls: {{ tplroot }}.discovery.clean

{%- if envoy.supervisor == 'systemd' %}

envoy-service-clean-disabled:
  service.disabled:
    - name: envoy
    - require:
      - envoy: envoy-service-clean-dead
    - require_in:
      - file: envoy-service-clean-unit-absent

envoy-service-clean-unit-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: envoy-service-clean-unit-absent
{%- endif %}

envoy-service-clean-unit-absent:
  file.absent:
    - name: {{ (envoy.systemd_dir ~ '/envoy.service') | tojson }}
    - require:
      - envoy: envoy-service-clean-dead

envoy-run-dir-clean-absent:
  file.absent:
    - name: {{ envoy.run_dir | tojson }}
    - require:
      - envoy: envoy-service-clean-dead
