from __future__ import annotations

import asyncio
import logging

import pytest

from chargeyard.worker.security import passwords as pw


def test_rule_16_to_40_printable():
    pw.check_rule("a" * 16)
    pw.check_rule("b" * 40)
    for bad in ("a" * 15, "a" * 41, "é" * 20, "tab\there-and-more-chars"):
        with pytest.raises(pw.PasswordError) as e:
            pw.check_rule(bad)
        assert bad not in str(e.value)  # the message never quotes the password


def test_hash_is_salted_parametrised_and_verifies():
    p = "correct-horse-battery"
    h1, h2 = pw.hash_password(p, ln=10), pw.hash_password(p, ln=10)
    assert h1 != h2 and h1.startswith("scrypt$ln=10,r=8,p=1$") and p not in h1
    assert pw.verify_password(p, h1) and pw.verify_password(p, h2)
    assert not pw.verify_password(p + "x", h1)
    assert not pw.verify_password(p, "garbage") and not pw.verify_password(p, "scrypt$ln=99,r=8,p=1$AA$AA")
    assert pw.needs_rehash(h1) and not pw.needs_rehash(pw.hash_password(p))


def test_default_cost_is_memory_hard():
    h = pw.hash_password("0123456789abcdef")
    assert h.startswith(f"scrypt$ln={pw.DEFAULT_LN},r=8,p=1$") and pw.DEFAULT_LN >= 14  # >= 16 MiB


def test_generated_passwords_fit_every_rule():
    g = pw.generate_password()
    pw.check_rule(g)
    assert len(g) == 40 and int(g, 16) >= 0 and g != pw.generate_password()


def test_verifier_caches_success_as_hmac_and_follows_the_stored_hash(caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-password-123"

    async def main():
        v = pw.PasswordVerifier(threads=1)
        h = pw.hash_password(secret, ln=10)
        assert await v.verify("CP1", secret, [h]) == h
        assert v.slow_checks == 1
        assert await v.verify("CP1", secret, [h]) == h          # one HMAC, no scrypt
        assert (v.slow_checks, v.fast_checks) == (1, 1)
        assert await v.verify("CP2", secret, [h]) == h          # bound to the charger id
        assert v.slow_checks == 2
        assert await v.verify("CP1", "wrong-password-123", [h]) is None
        h2 = pw.hash_password("the-new-password-1", ln=10)
        assert v.known("CP1", secret, [h2]) is None             # rotated: the cache no longer matches
        assert await v.verify("CP1", secret, [h2]) is None
        assert await v.verify("CP1", "the-new-password-1", [h, h2]) == h2
        v.forget("CP1")
        assert v.known("CP1", "the-new-password-1", [h2]) is None
        v.close()

    asyncio.run(main())
    assert secret not in caplog.text


def test_verifier_bounds_checks_in_flight():
    async def main():
        v = pw.PasswordVerifier(threads=1, max_in_flight=2)
        h = pw.hash_password("0123456789abcdef", ln=12)
        res = await asyncio.gather(*(v.verify(f"CP{i}", "0123456789abcdef", [h]) for i in range(4)),
                                   return_exceptions=True)
        assert sum(isinstance(r, pw.VerifierBusy) for r in res) == 2
        assert [r for r in res if not isinstance(r, Exception)] == [h, h]
        v.close()

    asyncio.run(main())


def test_scrypt_runs_off_the_event_loop():
    """While a slow check runs in the pool, the loop keeps ticking."""
    async def main():
        v = pw.PasswordVerifier(threads=1)
        h = pw.hash_password("0123456789abcdef", ln=15)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.ensure_future(ticker())
        await v.verify("CP1", "0123456789abcdef", [h])
        t.cancel()
        v.close()
        return ticks

    assert asyncio.run(main()) >= 5
