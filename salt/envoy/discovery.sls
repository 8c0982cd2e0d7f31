{#- Service discovery, both sides (issue: service discovery):
    - every host with `envoy:discovery:register:enabled` (default) registers the services its
      manifests serve (an ingress) at once, then the minion's scheduler heartbeats them with
      envoy.register every `minutes` (default 1), splayed; disabling it deregisters and removes
      the schedule (the clean path);
    - the minions `envoy:discovery:server:hosts` names run the discovery service as a daemon. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set discovery = salt['pillar.get']('envoy:discovery', {}) %}
{%- set register = discovery.get('register', {}) %}
{%- set server = discovery.get('server', {}) %}
{#- Only a running salt-minion applies a schedule change at once; elsewhere (masterless
    salt-call) the job is written to the minion's schedule file for the next minion start. #}
{%- set offline = register.get('schedule_offline', envoy.schedule.method != 'minion') %}
{%- set splay = register.get('splay', 20) %}
{%- set host_kwargs = {'root': envoy.root, 'install_dir': envoy.install_dir, 'config_dir': envoy.config_dir,
                       'manifest_dir': envoy.manifest_dir, 'log_dir': envoy.log_dir, 'run_dir': envoy.run_dir} %}

{%- if grains['id'] in server.get('hosts', []) %}

envoy-discovery-server-running:
  envoy.discovery_server_running:
    - name: envoy-discovery
    {%- for key, value in host_kwargs.items() %}
    - {{ key }}: {{ value | tojson }}
    {%- endfor %}

{%- elif server.get('hosts') is not none %}

envoy-discovery-server-dead:
  envoy.discovery_server_dead:
    - name: envoy-discovery
    {%- for key, value in host_kwargs.items() %}
    - {{ key }}: {{ value | tojson }}
    {%- endfor %}

{%- endif %}

{%- if register.get('enabled', True) and (discovery.get('address') or discovery.get('url')) %}

envoy-discovery-registered:
  envoy.registered:
    - name: envoy-discovery
    {%- for key, value in host_kwargs.items() %}
    - {{ key }}: {{ value | tojson }}
    {%- endfor %}
    {%- if grains['id'] in server.get('hosts', []) %}
    - require:
      - envoy: envoy-discovery-server-running
    {%- endif %}

envoy-discovery-schedule-present:
  schedule.present:
    - name: envoy-discovery-register
    - function: envoy.register
    {#- Self-contained: a minion running masterless has no pillar in its scheduler. #}
    - job_kwargs: {{ dict(host_kwargs, url=discovery.get('url') or ('http://' ~ discovery.address),
                          register=register) | tojson }}
    {%- if register.get('seconds') %}
    - seconds: {{ register.seconds }}
    {%- else %}
    - minutes: {{ register.get('minutes', 1) }}
    {%- endif %}
    - splay: {{ splay }}
    - maxrunning: 1
    - run_on_start: true
    - persist: true
    - offline: {{ offline | tojson }}

{%-   if envoy.schedule.method == 'cron' %}

# Masterless hosts on cron: the same heartbeat, every minute, splayed.
envoy-discovery-cron-file-managed:
  file.managed:
    - name: {{ (envoy.root ~ '/etc/cron.d/envoy-formula-discovery') | tojson }}
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (envoy formula): discovery heartbeat every minute, splayed.
        SHELL=/bin/sh
        PATH=/usr/sbin:/usr/bin:/sbin:/bin
        * * * * * root sleep $(shuf -i 0-{{ [splay, 50] | min }} -n 1) && timeout 50 {{ envoy.schedule.salt_call }} --local envoy.register >/dev/null 2>&1
{%-   endif %}

{%- else %}

envoy-discovery-schedule-absent:
  schedule.absent:
    - name: envoy-discovery-register
    - persist: true
    - offline: {{ offline | tojson }}

envoy-discovery-cron-file-absent:
  file.absent:
    - name: {{ (envoy.root ~ '/etc/cron.d/envoy-formula-discovery') | tojson }}

{%-   if discovery.get('address') or discovery.get('url') %}

envoy-discovery-deregistered:
  envoy.deregistered:
    - name: envoy-discovery
    {%- for key, value in host_kwargs.items() %}
    - {{ key }}: {{ value | tojson }}
    {%- endfor %}
{%-   endif %}

{%- endif %}
