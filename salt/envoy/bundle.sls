{#- The Envoy bundle (envoy binary, config generator, restarter) from pillar envoy:bundle:
    {source, sha256, keep}. Installed into <install_dir>/releases/<bundle id>, `current` flipped
    atomically; nothing is downloaded when that archive is already current. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set bundle = salt['pillar.get']('envoy:bundle', {}) %}

{%- if bundle.get('source') %}

envoy-bundle-installed:
  envoy.bundle_installed:
    - name: {{ bundle.source | tojson }}
    - sha256: {{ bundle.get('sha256') | tojson }}
    - keep: {{ bundle.get('keep', envoy.keep_releases) | tojson }}
    - root: {{ envoy.root | tojson }}
    - install_dir: {{ envoy.install_dir | tojson }}
    - keep_releases: {{ envoy.keep_releases | tojson }}

{%- else %}

envoy-bundle-installed:
  test.show_notification:
    - text: 'pillar envoy:bundle:source is not set: no Envoy bundle to install'
{%- endif %}
