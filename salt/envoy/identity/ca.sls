{#- The mesh CA, on the one minion pillar envoy:mesh_tls:ca:minion names (docs/mesh-tls.md): a key
    that never leaves <pki_dir>/ca (0600, root), a self-signed CA certificate, and that certificate
    in the Salt mine (envoy_mesh_ca), where every host takes it from. Certificates are signed here
    by Salt's x509.sign_remote_certificate under the signing policies of this minion's pillar
    (x509_signing_policies; the master must allow peers to call it). The CA certificate is not
    renewed by itself (days_remaining 0): a new CA must be trusted fleet-wide before it signs. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import envoy with context %}
{%- set tls = envoy.mesh_tls %}
{%- set ca_dir = envoy.pki_dir ~ '/ca' %}

envoy-identity-ca-dir-managed:
  file.directory:
    - name: {{ ca_dir | tojson }}
    - user: root
    - group: root
    - mode: '0700'
    - makedirs: true

envoy-identity-ca-key-managed:
  x509.private_key_managed:
    - name: {{ (ca_dir ~ '/mesh-ca.key') | tojson }}
    - algo: ec
    - keysize: 256
    - user: root
    - group: root
    - mode: '0600'
    - require:
      - file: envoy-identity-ca-dir-managed

envoy-identity-ca-certificate-managed:
  x509.certificate_managed:
    - name: {{ (ca_dir ~ '/mesh-ca.crt') | tojson }}
    - signing_private_key: {{ (ca_dir ~ '/mesh-ca.key') | tojson }}
    - CN: {{ ((tls.trust_domain or 'envoy') ~ ' mesh CA') | tojson }}
    - basicConstraints: 'critical, CA:true, pathlen:0'
    - keyUsage: 'critical, cRLSign, keyCertSign'
    - subjectKeyIdentifier: hash
    - days_valid: {{ tls.ca.days_valid }}
    - days_remaining: 0
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - x509: envoy-identity-ca-key-managed

envoy-identity-ca-published:
  envoy.mesh_ca_published:
    - name: {{ (ca_dir ~ '/mesh-ca.crt') | tojson }}
    - require:
      - x509: envoy-identity-ca-certificate-managed
