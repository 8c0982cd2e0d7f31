{#- Envoy under its supervisor, the bundle's restarter (root), which starts each hot restart epoch
    as the envoy user. supervisor systemd installs a unit (the template is overridable, see
    libtofs.jinja); daemon (hosts without systemd, sandboxes, the demo) starts the restarter
    detached with a pidfile and a log; auto picks from the init grain. A changed bundle or config
    hot restarts Envoy (a drained full restart when the new binary's hot restart version differs);
    a failed new epoch puts the previous config back. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- from tplroot ~ "/libtofs.jinja" import files_switch with context %}

include:
  - {{ tplroot }}.bundle
  - {{ tplroot }}.config

{%- if envoy.supervisor == 'systemd' %}

envoy-service-unit-managed:
  file.managed:
    - name: {{ (envoy.systemd_dir ~ '/envoy.service') | tojson }}
    - source: {{ files_switch(['envoy.service.jinja'], lookup='envoy-service-unit-managed') }}
    - template: jinja
    - mode: '0644'
    - makedirs: true
    - context:
        envoy: {{ envoy | tojson }}
        command: {{ salt['envoy.restarter_command']() | tojson }}

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
    - require:
      - sls: {{ tplroot }}.config
{%- if envoy.supervisor == 'systemd' %}
      - service: envoy-service-enabled
{%- endif %}
    - watch:
      - envoy-bundle-installed
      - envoy-config-file-managed
