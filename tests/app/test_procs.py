"""app/procs.py: binaries are found, processes start on their port and stop cleanly."""

from __future__ import annotations

import os
import sys

import pytest

from chargeyard import procs


def test_finds_binaries():
    for find in (procs.find_valkey_server, procs.find_nginx):
        try:
            path = find()
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        assert os.access(path, os.X_OK), path


def test_start_wait_and_stop(tmp_path):
    port = procs.free_port()
    code = ("import signal,socket,sys,time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # forces the SIGKILL path
            f"s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen()\n"
            "print('up', flush=True); time.sleep(60)\n")
    p = procs.start_process([sys.executable, "-c", code], port=port, log_path=tmp_path / "log",
                            timeout=10)
    assert p.running and procs.port_open("127.0.0.1", port)
    assert p.stop(grace=0.3) != 0
    assert not p.running and "up" in p.log_tail()
    p.stop()  # idempotent


def test_start_fails_fast_when_process_dies(tmp_path):
    with pytest.raises(RuntimeError, match="did not start"):
        procs.start_process([sys.executable, "-c", "raise SystemExit(3)"],
                            port=procs.free_port(), timeout=5)


def test_valkey_restart_same_port(tmp_path):
    try:
        v = procs.start_valkey(tmp_path)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    port = v.port
    v.kill()
    v2 = procs.start_valkey(tmp_path, port=port)
    try:
        assert procs.port_open("127.0.0.1", port)
    finally:
        v2.stop()
