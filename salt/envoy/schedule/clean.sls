{#- Stop the pull-based highstate first, so no scheduled run puts the formula back mid-clean. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

envoy-schedule-clean-envoy-highstate-absent:
  schedule.absent:
    - name: envoy-highstate
    - persist: true
    - offline: {{ (envoy.schedule.method != 'minion') | tojson }}

envoy-schedule-clean-files-absent:
  file.absent:
    - names:
      - {{ (envoy.cron_dir ~ '/envoy-formula-highstate') | tojson }}
      - {{ (envoy.systemd_dir ~ '/envoy-highstate.service') | tojson }}
      - {{ (envoy.systemd_dir ~ '/envoy-highstate.timer') | tojson }}
