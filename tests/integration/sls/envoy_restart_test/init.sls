{#- Tests only: a static Envoy config from pillar `envoy_restart_test:config`, kept with the previous
    one for rollback, and `envoy.running` watching it (stands in for the formula's envoy.config). #}
{%- set config_file = salt['envoy.settings']()['config_file'] %}

envoy-restart-test-config-kept:
  file.copy:
    - name: {{ config_file }}.prev
    - source: {{ config_file }}
    - force: true
    - prereq:
      - file: envoy-restart-test-config-managed

envoy-restart-test-config-managed:
  file.managed:
    - name: {{ config_file }}
    - contents: {{ salt['pillar.get']('envoy_restart_test:config') | json }}
    - makedirs: true

envoy-restart-test-running:
  envoy.running:
    - name: envoy
    - watch:
      - file: envoy-restart-test-config-managed
