{#- Service discovery, both sides:
    - every host with envoy:discovery:register:enabled (default) registers the services its
      manifests serve (an ingress) at once, then heartbeats them with envoy.register every
      `minutes` (default 1), splayed, through the minion's scheduler (and a cron file on cron
      hosts); disabling registration deregisters and removes the heartbeat;
    - with a registration token from the master (envoy:discovery:auth:token, issued by the
      envoy_discovery ext_pillar), every registration proves which minion sends it; the token
      lives in a 0600 file and never in a state's arguments or output;
    - the minions envoy:discovery:server:hosts names run the discovery service as a daemon, with
      the token keys in their own 0600 file when envoy:discovery:auth:mode is audit or enforce.
    Applied alone it needs nothing else: callers' Envoys health-check every host they learn from
    discovery, so a registration never sends traffic to a sidecar that is not up yet. In the full
    formula it runs after envoy.service. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set discovery = envoy.discovery %}
{%- set register = discovery.register %}
{%- set auth = discovery.auth %}
{%- set server_hosts = discovery.server.hosts %}

{%- if server_hosts and grains['id'] in server_hosts %}
{%-   if auth.mode != 'off' %}

# The keys registration tokens are signed with; the running service re-reads the file itself.
envoy-discovery-server-keys-managed:
  envoy.discovery_secret_managed:
    - name: envoy-discovery-keys
    - kind: keys
    - required: true
{%-   endif %}

envoy-discovery-server-running:
  envoy.discovery_server_running:
    - name: envoy-discovery
{%-   if auth.mode != 'off' %}
    - require:
      - envoy: envoy-discovery-server-keys-managed
{%-   endif %}

{%- elif server_hosts is not none %}

envoy-discovery-server-dead:
  envoy.discovery_server_dead:
    - name: envoy-discovery

{%- endif %}

{%- if register.enabled and discovery.url %}

# This host's proof for its registrations; needed once the servers enforce it.
envoy-discovery-token-managed:
  envoy.discovery_secret_managed:
    - name: envoy-discovery-token
    - kind: token
    - required: {{ (auth.mode == 'enforce') | tojson }}

envoy-discovery-registered:
  envoy.registered:
    - name: envoy-discovery
    - require:
      - envoy: envoy-discovery-token-managed
    {%- if server_hosts and grains['id'] in server_hosts %}
      - envoy: envoy-discovery-server-running
    {%- endif %}

envoy-discovery-schedule-present:
  schedule.present:
    - name: envoy-discovery-register
    - function: envoy.register
    {#- Self-contained: a masterless salt-minion has no pillar in its scheduler. #}
    - job_kwargs: {{ dict(envoy.lookup, discovery=discovery) | tojson }}
    {%- if register.seconds %}
    - seconds: {{ register.seconds }}
    {%- else %}
    - minutes: {{ register.minutes }}
    {%- endif %}
    - splay: {{ register.splay }}
    - maxrunning: 1
    - run_on_start: true
    - persist: true
    - offline: {{ register.schedule_offline | tojson }}

{%-   if envoy.schedule.method == 'cron' %}
{%-     set heartbeat = 'timeout 50 ' ~ envoy.schedule.salt_call ~ ' --local envoy.register' %}

# Masterless hosts on cron: the same heartbeat, every minute, splayed.
envoy-discovery-cron-file-managed:
  file.managed:
    - name: {{ (envoy.cron_dir ~ '/envoy-formula-discovery') | tojson }}
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (envoy formula): discovery heartbeat every minute, splayed.
        SHELL=/bin/sh
        PATH=/usr/sbin:/usr/bin:/sbin:/bin
        * * * * * root sleep $(shuf -i 0-{{ [register.splay, 50] | min }} -n 1) && {{ heartbeat }} >/dev/null 2>&1
{%-   endif %}

{%- else %}

envoy-discovery-schedule-absent:
  schedule.absent:
    - name: envoy-discovery-register
    - persist: true
    - offline: {{ register.schedule_offline | tojson }}

envoy-discovery-cron-file-absent:
  file.absent:
    - name: {{ (envoy.cron_dir ~ '/envoy-formula-discovery') | tojson }}

{%-   if discovery.url %}

envoy-discovery-deregistered:
  envoy.deregistered:
    - name: envoy-discovery
{%-   endif %}

{%- endif %}
