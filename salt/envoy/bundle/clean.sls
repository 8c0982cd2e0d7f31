{#- Remove every installed release and `current`, once Envoy no longer runs from them. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

include:
  - {{ tplroot }}.service.clean

envoy-bundle-clean-absent:
  file.absent:
    - name: {{ envoy.install_dir | tojson }}
    - require:
      - sls: {{ tplroot }}.service.clean
