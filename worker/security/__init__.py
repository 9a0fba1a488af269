"""Charger security (OCPP security profiles 0-3): handshake authentication, password
hashes, TLS, and the CSMS certificate authority. See ARCHITECTURE.md "Charger security".

Modules: ``passwords`` (scrypt hashes, the storm-proof verifier), ``handshake`` (the
401/429/accept decision), ``tls`` (server contexts, trusted proxies), ``certs``
(SignCertificate), ``gate`` (the asynchronous check in front of picows' upgrade).
"""
