{#- The fleet report's data: every envoy:report interval (default 1 min, splayed) this host
    publishes its summary (envoy.report_summary: LIVE, versions, config applied and drift,
    restarts, rejected updates, discovery, traffic since the last publish) to the Salt mine as
    `envoy.report`, so `salt-run envoy.report` reads the whole fleet from the master's mine
    instead of calling every minion. The job runs in the minion's scheduler (the mine needs a
    master); envoy:report:enabled false removes it. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set report = envoy.report %}

{%- if report.enabled %}

envoy-report-publish-present:
  schedule.present:
    - name: envoy-report-publish
    - function: mine.send
    - job_args:
      - envoy.report
    - job_kwargs:
        mine_function: envoy.report_summary
    {%- if report.seconds %}
    - seconds: {{ report.seconds }}
    {%- else %}
    - minutes: {{ report.minutes }}
    {%- endif %}
    - splay: {{ report.splay }}
    - maxrunning: 1
    - run_on_start: true
    - persist: true
    - offline: {{ report.schedule_offline | tojson }}

{%- else %}

envoy-report-publish-absent:
  schedule.absent:
    - name: envoy-report-publish
    - persist: true
    - offline: {{ report.schedule_offline | tojson }}

{%- endif %}
