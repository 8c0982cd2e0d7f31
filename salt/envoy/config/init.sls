{#- This host's Envoy config: rendered by the current bundle's generator from the service manifests
    in manifest_dir and pillar envoy, validated by the bundle's envoy (as the envoy user), written
    atomically (0640, root and the envoy group) with the previous config kept as envoy.yaml.prev. A
    bad manifest or pillar fails this state and leaves the running config alone. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

include:
  - {{ tplroot }}.user
  - {{ tplroot }}.bundle
  - {{ tplroot }}.identity

# Each service's deploy drops its manifest here.
envoy-manifest-dir-managed:
  file.directory:
    - name: {{ envoy.manifest_dir | tojson }}
    - makedirs: true
    - mode: '0755'

# Access logs go here; `envoy --mode validate` already opens them, so it must exist first.
envoy-log-dir-managed:
  file.directory:
    - name: {{ envoy.log_dir | tojson }}
    - user: {{ envoy.user | tojson }}
    - group: {{ envoy.group | tojson }}
    - makedirs: true
    - mode: '0755'
    - require:
      - sls: {{ tplroot }}.user

envoy-config-file-managed:
  envoy.config_managed:
    - name: {{ envoy.config_file | tojson }}
    - require:
      - sls: {{ tplroot }}.bundle
      # Validation wants the SDS files of mesh TLS in place.
      - sls: {{ tplroot }}.identity
      - file: envoy-manifest-dir-managed
      - file: envoy-log-dir-managed
