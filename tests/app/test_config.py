"""Settings: the help of every flag, the generated configuration table, and a port in
use (issue 19, bug 8 and rough edge 10)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chargeyard import cli, config

ROOT = Path(__file__).resolve().parents[2]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _cli_parser(monkeypatch) -> argparse.ArgumentParser:
    """The parser ``chargeyard`` builds (caught when it would parse)."""
    def grab(self, *a, **kw):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(_Parsed) as caught:
        cli.main(["run"])
    return caught.value.parser


def test_every_flag_has_help_default_and_env(monkeypatch):
    ap = _cli_parser(monkeypatch)
    subs = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            text = action.help or ""
            flag = action.option_strings[0]
            env = "CHARGEYARD_" + flag[2:].replace("-", "_").upper()
            assert "(default: " in text and f"env {env})" in text, (name, flag, text)
            checked += 1
    assert checked > 3 * len(config.HELP)


def test_every_setting_has_help():
    from dataclasses import fields

    assert {f.name for f in fields(config.Settings)} == set(config.HELP)


def test_configuration_doc_is_the_generated_table():
    """docs/configuration.md is ``python -m chargeyard.config --markdown`` (regenerate it
    after changing a setting)."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == config.markdown()
    rows = config.table_rows()
    assert len(rows) == len(config.HELP)
    for fl, env, default, _ in rows:
        assert f"| `{fl}` | `{env}` | `{default}` |" in doc


def test_flags_env_defaults_order():
    ap = argparse.ArgumentParser()
    config.add_arguments(ap)
    args = ap.parse_args(["--ws-port", "9100"])
    s = config.from_sources(args, env={"CHARGEYARD_WS_PORT": "9200", "CHARGEYARD_HTTP_PORT": "8200"})
    assert (s.ws_port, s.http_port, s.data_dir) == (9100, 8200, "./data")


@pytest.mark.parametrize("taken", ["--ws-port", "--http-port"])
def test_port_in_use_is_one_line_and_status_2(tmp_path, taken):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--ws-port": str(_free()), "--http-port": str(_free())}
        ports[taken] = str(port)
        proc = subprocess.run([sys.executable, "-m", "chargeyard.cli", "run", "--host", "127.0.0.1",
                               "--data-dir", str(tmp_path), *(x for kv in ports.items() for x in kv)],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{")]  # JSON logs aside
    assert lines == [f"chargeyard: {taken} {port}: 127.0.0.1:{port} is already in use "
                     f"(choose another port with {taken} or CHARGEYARD_{taken[2:].replace('-', '_').upper()})"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
