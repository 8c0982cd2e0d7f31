{#- Undo the formula on this host, in the reverse order of envoy: leave discovery first (so traffic
    drains away), stop Envoy, then remove the schedule, the unit, the config the formula wrote, the
    bundles and the run dir. The services' manifests (manifest_dir), Envoy's logs and the envoy
    system user are left alone: they belong to the service teams and to the operators, and files
    elsewhere may still be owned by that user. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set discovery = salt['pillar.get']('envoy:discovery', {}) %}
{%- set host_kwargs = {'root': envoy.root, 'install_dir': envoy.install_dir, 'config_dir': envoy.config_dir,
                       'manifest_dir': envoy.manifest_dir, 'log_dir': envoy.log_dir, 'run_dir': envoy.run_dir} %}
{%- set running_keys = ['root', 'install_dir', 'config_dir', 'manifest_dir', 'log_dir', 'run_dir', 'user',
                        'group', 'base_id', 'admin_port', 'supervisor'] %}
{%- set systemd_dir = envoy.root ~ '/etc/systemd/system' %}

{%- if discovery.get('address') or discovery.get('url') %}

envoy-discovery-clean-deregistered:
  envoy.deregistered:
    - name: envoy-discovery
    {%- for key, value in host_kwargs.items() %}
    - {{ key }}: {{ value | tojson }}
    {%- endfor %}
    - require_in:
      - envoy: envoy-service-clean-dead
{%- endif %}

envoy-discovery-server-clean-dead:
  envoy.discovery_server_dead:
    - name: envoy-discovery
    {%- for key, value in host_kwargs.items() %}
    - {{ key }}: {{ value | tojson }}
    {%- endfor %}

envoy-service-clean-dead:
  envoy.dead:
    - name: envoy
    {%- for key in running_keys %}
    - {{ key }}: {{ envoy[key] | tojson }}
    {%- endfor %}

{%- for job in ['envoy-highstate', 'envoy-discovery-register'] %}

envoy-schedule-clean-{{ job }}-absent:
  schedule.absent:
    - name: {{ job }}
    - persist: true
    - offline: {{ (envoy.schedule.method != 'minion') | tojson }}
{%- endfor %}

envoy-schedule-clean-files-absent:
  file.absent:
    - names:
      - {{ (envoy.root ~ '/etc/cron.d/envoy-formula-highstate') | tojson }}
      - {{ (envoy.root ~ '/etc/cron.d/envoy-formula-discovery') | tojson }}
      - {{ (systemd_dir ~ '/envoy-highstate.service') | tojson }}
      - {{ (systemd_dir ~ '/envoy-highstate.timer') | tojson }}

{%- if salt['envoy.supervisor'](**envoy) == 'systemd' %}

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
    - name: {{ (systemd_dir ~ '/envoy.service') | tojson }}
    - require:
      - envoy: envoy-service-clean-dead

envoy-config-clean-files-absent:
  file.absent:
    - names:
      - {{ envoy.config_file | tojson }}
      - {{ (envoy.config_file ~ '.prev') | tojson }}
      - {{ (envoy.config_dir ~ '/.envoy.yaml.inputs.json') | tojson }}
    - require:
      - envoy: envoy-service-clean-dead

envoy-bundle-clean-absent:
  file.absent:
    - name: {{ envoy.install_dir | tojson }}
    - require:
      - envoy: envoy-service-clean-dead

envoy-run-dir-clean-absent:
  file.absent:
    - name: {{ envoy.run_dir | tojson }}
    - require:
      - envoy: envoy-service-clean-dead
