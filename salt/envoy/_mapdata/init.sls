{#- Dump this host's resolved settings (what map.jinja gives every SLS) as YAML, for verifiers
    (tests/verify, Test Kitchen) and for operators asking "what does the formula think?". #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

envoy-mapdata-dumped:
  file.serialize:
    - name: {{ (envoy.root ~ '/tmp/salt_mapdata_dump/' ~ grains['id'] ~ '.yaml') | tojson }}
    - makedirs: true
    - mode: '0644'
    - serializer: yaml
    - dataset:
        values: {{ envoy | tojson }}
