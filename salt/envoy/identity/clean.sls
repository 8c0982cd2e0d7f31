{#- Remove this host's mesh TLS keys, certificates (and the CA it trusted) and its SDS files once
    Envoy is stopped (the service clean). The CA minion's own CA in <pki_dir>/ca is never removed
    here: losing its key means every host needs a certificate from a new CA. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set found = salt['file.find'](envoy.pki_dir, maxdepth=1, type='f', regex='.*\\.(key|crt)$')
                if salt['file.directory_exists'](envoy.pki_dir) else [] %}

include:
  - {{ tplroot }}.service.clean

envoy-identity-clean-files-absent:
  file.absent:
    - names:
      - {{ (envoy.pki_dir ~ '/sds') | tojson }}
{%- for path in found | sort %}
      - {{ path | tojson }}
{%- endfor %}
    - require:
      - sls: {{ tplroot }}.service.clean
