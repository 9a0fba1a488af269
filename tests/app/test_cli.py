"""app/cli.py: the subcommands listed are the ones built; the benchmarks are their own
command (``chargeyard-bench``), so the product CLI never imports ``chargeyard.bench``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chargeyard import cli

BUILT = ["run", "worker", "api", "billing", "monitoring", "cluster", "store", "events", "nginx-config"]


def test_help_lists_only_what_is_built(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "{" + ",".join(BUILT) + "}" in out, out
    for gone in ("bench", "not built", "not available"):
        assert gone not in out, gone


@pytest.mark.parametrize("cmd", ["billing", "monitoring"])
def test_services_need_kafka(cmd, capsys):
    assert cli.main([cmd]) == 2
    assert "--kafka-bootstrap" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["bench"])
def test_unbuilt_commands_are_usage_errors(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([cmd])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_nginx_config_is_forwarded(tmp_path):
    out = tmp_path / "n.conf"
    assert cli.main(["nginx-config", "--worker", "127.0.0.1:9001", "--api", "127.0.0.1:8081",
                     "--run-dir", str(tmp_path), "-o", str(out)]) == 0
    assert "server 127.0.0.1:9001" in out.read_text()


def test_the_product_cli_does_not_load_the_bench():
    code = ("import sys; from chargeyard import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert not [m for m in sys.modules if m.startswith('chargeyard.bench')], sorted(sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_bench_has_its_own_command():
    res = subprocess.run([sys.executable, "-m", "chargeyard.bench.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: chargeyard-bench"), res.stdout + res.stderr
