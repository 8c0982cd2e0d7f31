{#- Pull-based convergence: every host re-runs its own highstate on a schedule, splayed so a fleet
    never converges all at once, and never two runs at a time (maxrunning 1, flock, a oneshot unit).
    Pillar envoy:schedule: method minion | cron | systemd | none (default), minutes (15), splay (300 s).
    Each run is envoy.scheduled_highstate: state.highstate, its outcome recorded for envoy.status. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set sched = envoy.schedule %}
{%- set lock_file = envoy.run_dir ~ '/highstate.lock' %}
{%- set highstate = 'flock -n ' ~ lock_file ~ ' ' ~ sched.salt_call ~ ' --local envoy.scheduled_highstate' %}

{%- if sched.method == 'minion' %}

envoy-schedule-highstate-present:
  schedule.present:
    - name: envoy-highstate
    - function: envoy.scheduled_highstate
    {%- if sched.seconds %}
    - seconds: {{ sched.seconds }}
    {%- else %}
    - minutes: {{ sched.minutes }}
    {%- endif %}
    - splay: {{ sched.splay }}
    - maxrunning: 1
    - run_on_start: false
    - persist: true
    {#- salt-call has no running minion to take the job: write it for the minion's next start. #}
    - offline: {{ (opts.get('__cli') == 'salt-call') | tojson }}

{%- elif sched.method == 'cron' and not (sched.minutes | int) in range(1, 60) %}

envoy-schedule-cron-file-managed:
  test.fail_without_changes:
    - name: envoy-highstate-cron
    - comment: 'pillar envoy:schedule:minutes={{ sched.minutes }} cannot be a cron step: use 1 to 59'

{%- elif sched.method == 'cron' %}

envoy-schedule-cron-file-managed:
  file.managed:
    - name: {{ (envoy.cron_dir ~ '/envoy-formula-highstate') | tojson }}
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (envoy formula): pull-based highstate every {{ sched.minutes }} min, splayed.
        SHELL=/bin/sh
        PATH=/usr/sbin:/usr/bin:/sbin:/bin
        */{{ sched.minutes }} * * * * root sleep $(shuf -i 0-{{ sched.splay }} -n 1) && {{ highstate }} >/dev/null 2>&1

{%- elif sched.method == 'systemd' %}

envoy-schedule-highstate-service-managed:
  file.managed:
    - name: {{ (envoy.systemd_dir ~ '/envoy-highstate.service') | tojson }}
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (envoy formula)
        [Unit]
        Description=Pull-based Salt highstate (envoy formula)
        Wants=network-online.target
        After=network-online.target

        [Service]
        # oneshot: systemd never runs two at once.
        Type=oneshot
        ExecStart={{ sched.salt_call }} --local envoy.scheduled_highstate

envoy-schedule-highstate-timer-managed:
  file.managed:
    - name: {{ (envoy.systemd_dir ~ '/envoy-highstate.timer') | tojson }}
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (envoy formula)
        [Unit]
        Description=Pull-based Salt highstate every {{ sched.minutes }} min (envoy formula)

        [Timer]
        OnBootSec=2min
        OnUnitActiveSec={{ sched.minutes }}min
        RandomizedDelaySec={{ sched.splay }}

        [Install]
        WantedBy=timers.target

{%-   if not envoy.root %}

envoy-schedule-highstate-timer-running:
  service.running:
    - name: envoy-highstate.timer
    - enable: true
    - watch:
      - file: envoy-schedule-highstate-service-managed
      - file: envoy-schedule-highstate-timer-managed
{%-   endif %}

{%- else %}

envoy-schedule-none:
  test.nop:
    - name: 'envoy:schedule:method is none: highstate runs only when called'
{%- endif %}
