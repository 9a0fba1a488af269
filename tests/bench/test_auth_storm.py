"""The compare suite's authenticated storm (bench/auth_phase.py) at toy size: chargers
registered with a password connect (scrypt each), the server restarts on the same data
dir, and the storm back runs no scrypt at all. Never a speed threshold (shared machine)."""


def test_authenticated_storm_after_a_restart_runs_no_scrypt(tmp_path):
    from chargeyard.bench import cli, report, suite

    o = cli.smoke_options()
    o.auth_storm_chargers = 12
    unauthenticated = {"storm": {"absorb_s": 0.5, "chargers": 50}}  # as bench_target leaves it
    a = suite.auth_storm(o, str(tmp_path / "logs"), unauthenticated)

    assert "error" not in a and "unavailable" not in a, a
    first, storm = a["first_connect"], a["storm"]
    assert first["connected"] == 12 and first["password_checks"]["scrypt"] == 12
    assert storm["complete"] and storm["chargers"] == storm["reconnected"] == 12
    assert storm["password_checks"]["scrypt"] == 0 and storm["password_checks"]["stored_verifier"] == 12
    assert a["ratio_vs_unauthenticated"] == storm["absorb_s"] / 0.5
    md = "\n".join(report._auth_storm_lines(a))
    assert "| HTTP Basic, restarted worker" in md and "0 scrypt, 12 stored verifier" in md
    assert "Ratio authenticated / unauthenticated" in md
