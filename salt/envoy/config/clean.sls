{#- Remove the config the formula wrote (and its rollback copy and inputs stamp) once Envoy is
    stopped. The manifest dir and its manifests belong to the service teams and stay. #}
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
    - require:
      - sls: {{ tplroot }}.service.clean
