{#- Mesh TLS identities (pillar envoy:mesh_tls, docs/mesh-tls.md): this host trusts the mesh CA
    (its certificate from the Salt mine, published by envoy.identity.ca on the CA minion) and holds
    a key and a certificate per identity: `edge` with the front role, and each service of its
    manifests, with the URI SAN spiffe://<trust domain>/service/<name> (or .../edge). Salt's own
    x509 states make each key here (it never leaves the host) and have the CA minion sign its
    certificate through the master (peer communication, signing policy envoy:mesh_tls:ca:
    signing_policy); a certificate is renewed once fewer than renew_days_remaining days are left.
    Last, the SDS files Envoy reads them through are renamed into place: Envoy picks a renewed
    certificate up without a restart. With mesh TLS off this does nothing. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set tls = envoy.mesh_tls %}

{%- if tls.mode == 'off' %}

envoy-identity-off:
  test.nop:
    - name: 'mesh TLS is off (envoy:mesh_tls:mode); envoy.identity.clean removes keys left from before'

{%- else %}
{%-   set identities = salt['envoy.mesh_identities']() %}
{%-   set sds_dir = envoy.pki_dir ~ '/sds' %}

include:
  - {{ tplroot }}.user

# Keys are 0640 root:<envoy group>: Envoy reads them, nobody else.
envoy-identity-pki-dir-managed:
  file.directory:
    - name: {{ envoy.pki_dir | tojson }}
    - user: root
    - group: {{ envoy.group | tojson }}
    - mode: '0750'
    - makedirs: true
    - require:
      - sls: {{ tplroot }}.user

# The one directory Envoy watches: only envoy.mesh_secrets_published moves files in.
envoy-identity-sds-dir-managed:
  file.directory:
    - name: {{ sds_dir | tojson }}
    - user: root
    - group: {{ envoy.group | tojson }}
    - mode: '0750'
    - require:
      - file: envoy-identity-pki-dir-managed

envoy-identity-ca-trusted:
  envoy.mesh_ca_trusted:
    - name: {{ (envoy.pki_dir ~ '/mesh-ca.crt') | tojson }}
    - require:
      - file: envoy-identity-pki-dir-managed

{%-   for entry in identities %}

envoy-identity-{{ entry.identity }}-key-managed:
  x509.private_key_managed:
    - name: {{ entry.key | tojson }}
    - algo: ec
    - keysize: 256
    - user: root
    - group: {{ envoy.group | tojson }}
    - mode: '0640'
    - require:
      - file: envoy-identity-pki-dir-managed

envoy-identity-{{ entry.identity }}-certificate-managed:
  x509.certificate_managed:
    - name: {{ entry.certificate | tojson }}
    - ca_server: {{ tls.ca.minion | tojson }}
    - signing_policy: {{ entry.signing_policy | tojson }}
    - private_key: {{ entry.key | tojson }}
    - CN: {{ entry.identity | tojson }}
    - subjectAltName: {{ ('URI:' ~ entry.uri) | tojson }}
    - days_valid: {{ tls.days_valid }}
    - days_remaining: {{ tls.renew_days_remaining }}
    - user: root
    - group: {{ envoy.group | tojson }}
    - mode: '0644'
    - require:
      - x509: envoy-identity-{{ entry.identity }}-key-managed
      - envoy: envoy-identity-ca-trusted
{%-   endfor %}

envoy-identity-secrets-published:
  envoy.mesh_secrets_published:
    - name: {{ sds_dir | tojson }}
    - require:
      - file: envoy-identity-sds-dir-managed
      - envoy: envoy-identity-ca-trusted
{%-   for entry in identities %}
      - x509: envoy-identity-{{ entry.identity }}-certificate-managed
{%-   endfor %}

{%- endif %}
