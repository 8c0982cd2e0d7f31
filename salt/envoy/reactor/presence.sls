{#- Reactor for salt/presence/change (master config: presence_events: true, and
      reactor:
        - 'salt/presence/change':
          - salt://envoy/reactor/presence.sls
    ): the registrations of minions the master lost expire in the discovery service now rather
    than at the end of their TTL. The runner (_runners/discovery.py) does nothing when a large
    share of the fleet is lost at once (the master's own restart or outage), and the discovery
    service expires only hosts whose heartbeats stopped too (docs/discovery.md, Salt presence). #}
{%- if data.get('lost') %}

envoy-discovery-expire-lost-minions:
  runner.discovery.presence_lost:
    - args:
      - lost: {{ data['lost'] | tojson }}
{%- endif %}
