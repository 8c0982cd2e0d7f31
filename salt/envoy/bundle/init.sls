{#- The Envoy bundle from pillar envoy:bundle {source, sha256, keep}: fetched, verified (the
    archive's sha256, every member against bundle.json, bin/envoy --version), unpacked into
    <install_dir>/releases/<bundle id>, and `current` flipped atomically. Nothing is downloaded when
    that archive is already current. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

{%- if envoy.bundle.source %}

envoy-bundle-installed:
  envoy.bundle_installed:
    - name: {{ envoy.bundle.source | tojson }}
    - sha256: {{ envoy.bundle.sha256 | tojson }}
    - keep: {{ envoy.bundle.keep | tojson }}

{%- else %}

envoy-bundle-installed:
  test.show_notification:
    - text: 'pillar envoy:bundle:source is not set: no Envoy bundle to install'
{%- endif %}
