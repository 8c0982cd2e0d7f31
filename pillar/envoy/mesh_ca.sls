# Pillar of the mesh CA minion only (target it to the minion envoy:mesh_tls:ca:minion names): the
# signing policy every host's certificate is requested under (docs/mesh-tls.md). The paths are
# where envoy.identity.ca keeps the CA (<pki_dir>/ca, pki_dir default /etc/envoy/pki). A signing
# policy's values override the request's, so what it fixes here no host can ask otherwise.
x509_signing_policies:
  envoy_mesh:
    # Who may request: '*' lets every minion the master accepted get a mesh certificate, for any
    # identity it asks for. To tie each identity to its hosts, use one policy per identity (see
    # docs/mesh-tls.md, "One policy per identity") and envoy:mesh_tls:ca:signing_policy
    # "envoy_mesh_{identity}".
    - minions: '*'
    - signing_private_key: /etc/envoy/pki/ca/mesh-ca.key
    - signing_cert: /etc/envoy/pki/ca/mesh-ca.crt
    - basicConstraints: 'critical, CA:false'
    - keyUsage: 'critical, digitalSignature'
    - extendedKeyUsage: 'serverAuth, clientAuth'
    - subjectKeyIdentifier: hash
    - authorityKeyIdentifier: keyid:always
