from __future__ import annotations

import asyncio
import base64

import pytest

from chargeyard.store.chargers import ChargerCredentials
from chargeyard.worker.security import handshake as hs
from chargeyard.worker.security.passwords import PasswordVerifier, hash_password
from chargeyard.worker.security.tls import PeerIdentity

PW = "0123456789abcdef-pw"
H = hash_password(PW, ln=10)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(profile=1, unknown="", creds=None, **kw):
    table = {c.charger_id: c for c in (creds or [ChargerCredentials(charger_id="CP1", security_profile=1,
                                                                   password_hash=H)])}

    async def lookup(cid):
        return table.get(cid)

    clock = Clock()
    return hs.Authenticator(lookup, profile=profile, unknown_chargers=unknown, verifier=PasswordVerifier(1),
                            clock=clock, **kw), clock, table


PLAIN = PeerIdentity("10.0.0.9")
TLS = PeerIdentity("10.0.0.9", secure=True)


def run(coro):
    return asyncio.run(coro)


def test_parse_basic():
    assert hs.parse_basic(basic("CP1", "a:b")) == ("CP1", "a:b")
    assert hs.parse_basic("basic " + base64.b64encode(b"CP1:\xff\xfe").decode()) == ("CP1", "\xff\xfe")
    for bad in (None, "", "Bearer x", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert hs.parse_basic(bad) is None


def test_profile1_right_wrong_missing():
    a, _, _ = make()
    ok = run(a.decide("CP1", basic("CP1", PW), PLAIN))
    assert ok.accepted and ok.profile == 1 and ok.matched_hash == H
    d = run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PLAIN))
    assert (d.status, d.reason) == (401, "bad_password") and "WWW-Authenticate" in d.headers()
    assert run(a.decide("CP1", None, PLAIN)).reason == "missing_credentials"
    assert run(a.decide("CP1", basic("CP2", PW), PLAIN)).reason == "bad_username"
    assert run(a.decide("CPX", basic("CPX", PW), PLAIN)).reason == "unknown_charger"


def test_profile0_accepts_anyone_but_registered_chargers_keep_their_profile():
    a, _, _ = make(profile=0)
    assert "any charger id is accepted" in a.describe()
    assert run(a.decide("whoever", None, PLAIN)).accepted
    assert run(a.decide("CP1", None, PLAIN)).reason == "missing_credentials"
    assert run(a.decide("CP1", basic("CP1", PW), PLAIN)).accepted


def test_unknown_chargers_accept_from_profile1():
    a, _, _ = make(profile=1, unknown="accept")
    assert run(a.decide("new-one", None, PLAIN)).accepted
    with pytest.raises(ValueError):
        make(unknown="maybe")
    with pytest.raises(ValueError):
        make(profile=4)


def test_profile2_needs_tls_and_profile3_a_cert_with_cn_equal_id():
    creds = [ChargerCredentials(charger_id="CP1", security_profile=2, password_hash=H),
             ChargerCredentials(charger_id="CP3", security_profile=3)]
    a, _, _ = make(profile=1, creds=creds)
    assert run(a.decide("CP1", basic("CP1", PW), PLAIN)).reason == "tls_required"
    assert run(a.decide("CP1", basic("CP1", PW), TLS)).profile == 2
    assert run(a.decide("CP3", None, TLS)).reason == "no_client_cert"
    assert run(a.decide("CP3", None, PeerIdentity("x", True, "CP1"))).reason == "cert_cn_mismatch"
    assert run(a.decide("CP3", None, PeerIdentity("x", True, "CP3"))).profile == 3
    assert run(a.decide("CP3", None, PeerIdentity("x", False, "CP3"))).reason == "tls_required"


def test_repeated_failures_get_429_with_retry_after_per_id_and_per_address():
    a, clock, _ = make(id_failures=(3, 60.0), address_failures=(5, 60.0))
    for _ in range(3):
        assert run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PLAIN)).status == 401
    d = run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PLAIN))
    assert (d.status, d.reason) == (429, "rate_limited") and d.headers() == {"Retry-After": "60"}
    clock.t += 30
    assert run(a.decide("CP1", basic("CP1", PW), PLAIN)).headers() == {"Retry-After": "30"}
    clock.t += 31
    assert run(a.decide("CP1", basic("CP1", PW), PLAIN)).accepted
    # per address: other ids from the same address
    for i in range(5):
        run(a.decide(f"X{i}", None, PLAIN))
    assert run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PLAIN)).status == 429
    assert run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PeerIdentity("10.0.0.10"))).status == 401


def test_a_known_good_password_passes_while_its_id_is_throttled():
    """An attacker hammering CP1 cannot lock the real charger out once it connected."""
    a, _, _ = make(id_failures=(2, 60.0))
    assert run(a.decide("CP1", basic("CP1", PW), PLAIN)).accepted
    for _ in range(5):
        run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PeerIdentity("6.6.6.6")))
    assert run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PLAIN)).status == 429
    assert run(a.decide("CP1", basic("CP1", PW), PLAIN)).accepted


def test_failures_are_counted_by_reason():
    from prometheus_client import REGISTRY

    def n(reason):
        return REGISTRY.get_sample_value("chargeyard_ws_auth_failures_total", {"reason": reason}) or 0

    before = n("bad_password")
    a, _, _ = make()
    run(a.decide("CP1", basic("CP1", "wrong-password-xx"), PLAIN))
    assert n("bad_password") == before + 1
    assert set(hs.REASONS) >= {"bad_password", "missing_credentials", "rate_limited", "cert_cn_mismatch"}


def test_rotation_hashes_all_verify():
    h_new = hash_password("the-next-password-1", ln=10)
    creds = [ChargerCredentials(charger_id="CP1", security_profile=1, password_hash=H,
                                pending_password_hash=h_new)]
    a, _, _ = make(creds=creds)
    assert run(a.decide("CP1", basic("CP1", PW), PLAIN)).matched_hash == H
    assert run(a.decide("CP1", basic("CP1", "the-next-password-1"), PLAIN)).matched_hash == h_new
