{#- Envoy under its supervisor: the bundle's restarter (envoy-restarter), which runs Envoy's hot
    restart epochs. `supervisor: systemd` installs a unit; `daemon` (hosts without systemd, sandboxes,
    the demo) starts the restarter detached with a pidfile and a log; `auto` picks from the init
    grain. A changed bundle or config hot restarts Envoy (a drained full restart when the new binary's
    hot restart version differs); a failed new epoch puts the previous config back. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set supervisor = salt['envoy.supervisor'](**envoy) %}

include:
  - {{ tplroot }}.bundle
  - {{ tplroot }}.config

{%- if supervisor == 'systemd' %}

envoy-service-unit-managed:
  file.managed:
    - name: /etc/systemd/system/envoy.service
    - source: salt://{{ tplroot }}/files/envoy.service.jinja
    - template: jinja
    - mode: '0644'
    - context:
        envoy: {{ envoy | tojson }}
        command: {{ salt['envoy.restarter_command'](**envoy) | tojson }}
        timing: {{ salt['envoy.restart_settings']() | tojson }}

envoy-service-unit-loaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: envoy-service-unit-managed

envoy-service-enabled:
  service.enabled:
    - name: envoy
    - require:
      - module: envoy-service-unit-loaded
{%- endif %}

envoy-service-running:
  envoy.running:
    - name: envoy
{%- for key in ['root', 'install_dir', 'config_dir', 'manifest_dir', 'log_dir', 'run_dir', 'user', 'group',
                'base_id', 'admin_port', 'supervisor'] %}
    - {{ key }}: {{ envoy[key] | tojson }}
{%- endfor %}
{%- if supervisor == 'systemd' %}
    - require:
      - service: envoy-service-enabled
{%- endif %}
    - watch:
      - envoy-bundle-installed
      - envoy-config-file-managed
