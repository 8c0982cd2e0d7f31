"""
Certificates for tests that run without a Salt master (the lab tests get theirs from Salt's x509
states and the CA minion): a CA and leaf certificates with a URI SAN, made with ``cryptography``
(which Salt's x509 modules use too). Test fixtures only: the formula never makes certificates
itself.
"""

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, name="test mesh CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(_now() - datetime.timedelta(hours=1))
                     .not_valid_after(_now() + datetime.timedelta(days=365))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, uri, key=None, hours=24 * 30):
        """(key PEM, certificate PEM, serial) for ``uri``; ``key``: keep an existing key (renewal)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(minutes=5))
                .not_valid_after(_now() + datetime.timedelta(hours=hours))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return key, cert

    def write_identity(self, pki_dir, identity, uri, key=None, hours=24 * 30):
        """``<pki_dir>/<identity>.key`` and ``.crt`` (renamed into place, as Salt writes them);
        returns (key object, serial)."""
        key, cert = self.issue(uri, key, hours)
        pki_dir = Path(pki_dir)
        for suffix, data in (("key", _pem_key(key)), ("crt", cert.public_bytes(serialization.Encoding.PEM))):
            tmp = pki_dir / f".{identity}.{suffix}.tmp"
            tmp.write_bytes(data)
            tmp.replace(pki_dir / f"{identity}.{suffix}")
        return key, cert.serial_number
