{#- Stop publishing this host's summary to the mine, and take the last one out of the mine, so the
    fleet report no longer lists a host that left (rather than showing its row ageing). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

envoy-report-clean-publish-absent:
  schedule.absent:
    - name: envoy-report-publish
    - persist: true
    - offline: {{ envoy.report.schedule_offline | tojson }}

envoy-report-clean-mine-deleted:
  module.run:
    - mine.delete:
      - fun: envoy.report
    - require:
      - schedule: envoy-report-clean-publish-absent
    {#- Only while the mine holds an entry: a second clean changes nothing. #}
    - onlyif:
      - fun: mine.get
        args:
          - {{ grains['id'] | tojson }}
          - envoy.report
