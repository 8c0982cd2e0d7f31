{#- Remove the config the formula wrote once Envoy is stopped: the bootstrap and its rollback copy,
    the xDS files of files mode and theirs, client.json, the inputs stamp and the record of refused
    inputs. The manifest dir and its manifests belong to the service teams and stay. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

include:
  - {{ tplroot }}.service.clean

envoy-config-clean-files-absent:
  file.absent:
    - names:
      - {{ envoy.config_file | tojson }}
      - {{ (envoy.config_file ~ '.prev') | tojson }}
      - {{ (envoy.config_dir ~ '/.envoy.yaml.inputs.json') | tojson }}
      - {{ (envoy.config_dir ~ '/.envoy.rejected.json') | tojson }}
      - {{ (envoy.config_dir ~ '/client.json') | tojson }}
      - {{ (envoy.config_dir ~ '/xds') | tojson }}
      - {{ (envoy.config_dir ~ '/xds.prev') | tojson }}
    - require:
      - sls: {{ tplroot }}.service.clean
