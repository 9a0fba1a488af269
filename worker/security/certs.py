"""The CSMS certificate authority: signs chargers' SignCertificate requests.

A charger sends a PKCS#10 CSR (1.6 security extension ``SignCertificate``, 2.0.1
``SignCertificate``). The CSMS checks that the CSR is well formed, self-signed by its
key, carries an acceptable key, and that its subject CN is the charger's own id; then it
signs a client certificate with ``--ca-cert`` / ``--ca-key`` and sends the PEM chain
(leaf, then the CA) in ``CertificateSigned``. The charger uses it for profile 3.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class CsrRejected(ValueError):
    """The CSR is not signable (the message says why; it is safe to log)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def csr_cn(csr: x509.CertificateSigningRequest) -> str | None:
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        return None
    v = cns[0].value
    return v if isinstance(v, str) else None


def _check_key(key: object) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CsrRejected(f"RSA key of {key.key_size} bits (at least 2048)")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise CsrRejected(f"EC curve {key.curve.name} not accepted")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrRejected("key type not accepted (RSA >= 2048, EC P-256/384/521, Ed25519)")


@dataclass
class CertificateAuthority:
    cert: x509.Certificate
    key: object  # a private key matching ``cert``
    days: int = 365

    @classmethod
    def from_files(cls, cert_path: str, key_path: str, password: bytes | None = None,
                   days: int = 365) -> "CertificateAuthority":
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=password)
        if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != key.public_key().public_bytes(serialization.Encoding.DER,  # type: ignore[union-attr]
                                                 serialization.PublicFormat.SubjectPublicKeyInfo):
            raise ValueError("--ca-key does not match --ca-cert")
        return cls(cert, key, days)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def check_csr(self, csr_pem: str | bytes, charger_id: str) -> x509.CertificateSigningRequest:
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError:
            raise CsrRejected("not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise CsrRejected("the CSR's signature does not verify")
        cn = csr_cn(csr)
        if cn != charger_id:
            raise CsrRejected("the CSR's subject CN is not the charger id")
        _check_key(csr.public_key())
        return csr

    def sign_csr(self, csr_pem: str | bytes, charger_id: str, *, now: dt.datetime | None = None) -> str:
        """The PEM chain (leaf, CA) for ``CertificateSigned``; :class:`CsrRejected` if the
        CSR does not qualify."""
        csr = self.check_csr(csr_pem, charger_id)
        now = now or _utcnow()
        pub = csr.public_key()
        ca_pub = self.cert.public_key()
        usage = x509.KeyUsage(digital_signature=True, key_encipherment=isinstance(pub, rsa.RSAPublicKey),
                              content_commitment=False, data_encipherment=False,
                              key_agreement=isinstance(pub, ec.EllipticCurvePublicKey),
                              key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
        builder = (x509.CertificateBuilder()
                   .subject_name(csr.subject)
                   .issuer_name(self.cert.subject)
                   .public_key(pub)
                   .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(min(now + dt.timedelta(days=self.days), self.cert.not_valid_after_utc))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(usage, critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_pub),  # type: ignore[arg-type]
                                  critical=False))
        algo = None if isinstance(self.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        leaf = builder.sign(self.key, algo)  # type: ignore[arg-type]
        return leaf.public_bytes(serialization.Encoding.PEM).decode() + self.pem


__all__ = ["CertificateAuthority", "CsrRejected", "csr_cn"]
