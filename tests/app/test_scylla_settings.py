"""ScyllaDB connection settings: flags and environment reach the store's driver options
(password authentication, TLS that verifies the server, the local data centre). No server
runs here; the contract tests run against one when CHARGEYARD_SCYLLA_HOSTS is set."""

from __future__ import annotations

import argparse
import os
import ssl

import pytest

from chargeyard.config import add_arguments, from_sources
from chargeyard.node import scylla_options


def settings(argv: list[str], env: dict[str, str] | None = None):
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    return from_sources(ap.parse_args(argv), env=env or {})


def test_no_options_by_default():
    assert scylla_options(settings(["--store", "scylla"])) == {}


def test_password_from_the_environment_and_the_data_centre():
    s = settings(["--scylla-username", "chargeyard", "--scylla-datacenter", "eu-west"],
                 {"CHARGEYARD_SCYLLA_PASSWORD": "s3cret"})
    assert scylla_options(s) == {"username": "chargeyard", "password": "s3cret", "datacenter": "eu-west"}


def test_a_password_without_a_user_is_refused():
    with pytest.raises(ValueError, match="--scylla-username"):
        scylla_options(settings(["--scylla-password", "x"]))


def test_tls_verifies_the_server_certificate_and_name():
    ctx = scylla_options(settings(["--scylla-tls"]))["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_a_ca_file_implies_tls_and_must_be_readable(tmp_path):
    with pytest.raises(ValueError, match="scylla-ca-file"):
        scylla_options(settings(["--scylla-ca-file", str(tmp_path / "missing.pem")]))
    cafile = ssl.get_default_verify_paths().cafile
    if not cafile or not os.path.exists(cafile):
        pytest.skip("no system CA bundle file to load")
    ctx = scylla_options(settings(["--scylla-ca-file", cafile]))["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname and ctx.cert_store_stats()["x509_ca"] > 0
