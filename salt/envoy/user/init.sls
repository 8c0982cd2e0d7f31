{#- The unprivileged user Envoy runs as (the restarter starts each epoch as this user). Managed only
    when Salt runs as root and the formula is not told to run Envoy as root or as an existing user
    it must not touch (envoy:lookup:manage_user: false). No clean SLS: files elsewhere may still be
    owned by this user. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}

{%- if envoy.manage_user and envoy.user != 'root' and grains.get('uid', 0) == 0 %}

envoy-user-group-present:
  group.present:
    - name: {{ envoy.group }}
    - system: true

envoy-user-present:
  user.present:
    - name: {{ envoy.user }}
    - gid: {{ envoy.group }}
    - system: true
    - home: /nonexistent
    - createhome: false
    - shell: /usr/sbin/nologin
    - require:
      - group: envoy-user-group-present

{%- else %}

envoy-user-unmanaged:
  test.nop:
    - name: 'Envoy runs as {{ envoy.user }}; the formula does not manage that user'
{%- endif %}
