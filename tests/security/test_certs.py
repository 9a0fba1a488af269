from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chargeyard.worker.security.certs import CertificateAuthority, CsrRejected

from . import pki


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    issued = pki.make_ca()
    c, k = issued.write(tmp_path_factory.mktemp("ca"), "ca")
    return CertificateAuthority.from_files(c, k), issued


def _chain(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def test_sign_csr_chain_verifies_against_the_ca(ca):
    authority, issued = ca
    req, _ = pki.csr("CP-7")
    chain = _chain(authority.sign_csr(req, "CP-7"))
    assert len(chain) == 2 and chain[1] == issued.cert
    leaf = chain[0]
    leaf.verify_directly_issued_by(issued.cert)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "CP-7"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # (test_gate.py connects with such a certificate over mutual TLS)


def test_csr_for_another_id_is_rejected(ca):
    authority, _ = ca
    req, _ = pki.csr("CP-8")
    with pytest.raises(CsrRejected, match="CN is not the charger id"):
        authority.sign_csr(req, "CP-7")


def test_garbage_weak_keys_and_forged_csrs_are_rejected(ca):
    authority, _ = ca
    with pytest.raises(CsrRejected):
        authority.sign_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "CP")
    from cryptography.hazmat.primitives import hashes, serialization
    weak = rsa.generate_private_key(65537, 1024)
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CP")])).sign(weak, hashes.SHA256()))
    with pytest.raises(CsrRejected, match="2048"):
        authority.sign_csr(req.public_bytes(serialization.Encoding.PEM), "CP")


def test_validity_never_outlives_the_ca(ca):
    authority, issued = ca
    req, _ = pki.csr("CP-9")
    leaf = _chain(CertificateAuthority(issued.cert, issued.key, days=100_000).sign_csr(req, "CP-9"))[0]
    assert leaf.not_valid_after_utc <= issued.cert.not_valid_after_utc
    assert leaf.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc)


def test_mismatched_ca_key_is_refused(tmp_path):
    a, b = pki.make_ca(), pki.make_ca("Other")
    c, _ = a.write(tmp_path, "a")
    _, k = b.write(tmp_path, "b")
    with pytest.raises(ValueError, match="does not match"):
        CertificateAuthority.from_files(c, k)
