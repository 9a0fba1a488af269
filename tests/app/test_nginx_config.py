"""app/nginx_config.py: the nginx front rendered for a worker list (``chargeyard
nginx-config``); tests/cluster/test_nginx_front.py runs it for real."""

from __future__ import annotations

import pytest

from chargeyard import nginx_config


def test_render_fills_everything(tmp_path):
    text = nginx_config.render(["10.0.0.1:9000", "10.0.0.2:9000"], 9000, ["10.0.1.1:8080"], 8080,
                               run_dir=tmp_path)
    assert "@@" not in text
    assert "hash $charger_id consistent;" in text
    assert "server 10.0.0.1:9000" in text and "server 10.0.0.2:9000" in text
    assert "server 10.0.1.1:8080 " in text
    assert f"pid {tmp_path.resolve()}/nginx.pid;" in text
    assert "access_log off;" in text and "proxy_read_timeout 3600s;" in text
    with pytest.raises(ValueError):
        nginx_config.render(["bad host;"], 9000, ["a:1"], 8080)
    with pytest.raises(ValueError):
        nginx_config.render([], 9000, ["a:1"], 8080)


def test_main_writes_file(tmp_path, capsys):
    out = tmp_path / "n.conf"
    assert nginx_config.main(["--worker", "127.0.0.1:9001", "--api", "127.0.0.1:8081",
                              "--ws-port", "9000", "--http-port", "8080",
                              "--run-dir", str(tmp_path), "-o", str(out)]) == 0
    assert "server 127.0.0.1:9001" in out.read_text()
