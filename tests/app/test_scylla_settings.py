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


_DEFAULTS = {"consistency": "LOCAL_QUORUM", "read_consistency": None, "serial_consistency": "LOCAL_SERIAL",
             "request_timeout": 10.0, "connect_timeout": 10.0, "max_concurrency": 128, "tablets": False,
             "retention_days": 90.0, "replication_factor": None}


def test_defaults_are_the_stores():
    assert scylla_options(settings(["--store", "scylla"])) == _DEFAULTS
    import inspect

    from chargeyard.store.scylla import ScyllaStore

    params = inspect.signature(ScyllaStore.__init__).parameters
    assert {k: params[k].default for k in _DEFAULTS} == _DEFAULTS


def test_tuning_flags_and_environment_reach_the_store():
    pytest.importorskip("cassandra")
    from chargeyard.node import make_store

    s = settings(["--store", "scylla", "--scylla-hosts", "10.0.0.1,10.0.0.2",
                  "--scylla-consistency", "quorum", "--scylla-read-consistency", "ONE",
                  "--scylla-serial-consistency", "SERIAL", "--scylla-request-timeout", "2.5",
                  "--scylla-connect-timeout", "3", "--scylla-concurrency", "16", "--scylla-tablets",
                  "--scylla-replication-factor", "5"],
                 {"CHARGEYARD_SCYLLA_RETENTION_DAYS": "30"})
    store = make_store(s)
    assert (store.consistency, store.read_consistency, store.serial_consistency) == ("QUORUM", "ONE", "SERIAL")
    assert (store.request_timeout, store.connect_timeout, store.max_concurrency) == (2.5, 3.0, 16)
    assert store.tablets is True and store.replication_factor == 5
    assert store.retention_days == 30.0 and store._ttl == 30 * 86400


@pytest.mark.parametrize("argv, text", [
    (["--scylla-consistency", "STRONG"], "consistency"),
    (["--scylla-serial-consistency", "QUORUM"], "serial_consistency"),
    (["--scylla-request-timeout", "0"], "timeouts"),
    (["--scylla-retention-days", "-1"], "retention_days"),
    (["--scylla-concurrency", "0"], "--scylla-concurrency"),
])
def test_bad_values_are_one_line(argv, text):
    pytest.importorskip("cassandra")
    from chargeyard.node import make_store

    with pytest.raises(SystemExit, match=text):
        make_store(settings(["--store", "scylla", "--scylla-hosts", "127.0.0.1", *argv]))


def test_password_from_the_environment_and_the_data_centre():
    s = settings(["--scylla-username", "chargeyard", "--scylla-datacenter", "eu-west"],
                 {"CHARGEYARD_SCYLLA_PASSWORD": "s3cret"})
    assert scylla_options(s) == {**_DEFAULTS, "username": "chargeyard", "password": "s3cret", "datacenter": "eu-west"}


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
