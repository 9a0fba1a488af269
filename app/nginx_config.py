"""Render the nginx front for a cluster (``chargeyard nginx-config``).

The template lives in ``nginx/chargeyard.conf.template`` and ships in the wheel as
package data of ``chargeyard.nginx``; ``render`` fills in the
worker and API upstreams, the listen addresses and the run dir that holds every
file nginx writes (pid, logs, temp), so it runs as any user.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

_NAME = "chargeyard.conf.template"
# the source tree (editable installs map only the packages they knew at install time)
_SOURCE_TEMPLATE = Path(__file__).resolve().parent.parent / "nginx" / _NAME


def default_template() -> Path:
    """The packaged template (``chargeyard.nginx``), else the one in the source tree."""
    try:
        from importlib.resources import files

        res = files("chargeyard.nginx") / _NAME
        if res.is_file():
            return Path(str(res))
    except (ModuleNotFoundError, TypeError, NotADirectoryError):
        pass
    if _SOURCE_TEMPLATE.is_file():
        return _SOURCE_TEMPLATE
    raise FileNotFoundError(f"nginx template {_NAME} not found (broken install?)")


TEMPLATE = _SOURCE_TEMPLATE  # kept for callers that read the path; render() uses default_template()

_ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):\d{1,5}$|^unix:/\S+$")


def _check_addr(addr: str) -> str:
    if not _ADDR.match(addr):
        raise ValueError(f"not a host:port upstream address: {addr!r}")
    return addr


def _listen(value: int | str) -> str:
    """``9000`` or ``"127.0.0.1:9000"``."""
    s = str(value)
    if s.isdigit():
        return s
    return _check_addr(s)


def render(workers: Sequence[str], listen_ws: int | str, api_upstreams: Sequence[str],
           listen_http: int | str, *, run_dir: str | os.PathLike = ".",
           access_log: bool = False, daemon: bool = False, worker_processes: int | str = "auto",
           worker_connections: int = 65536, ws_timeout: str = "3600s",
           api_timeout: str = "60s", shutdown_timeout: str = "30s", template: str | os.PathLike | None = None,
           tls_cert: str = "", tls_key: str = "", tls_client_ca: str = "",
           require_client_cert: bool = False) -> str:
    """The nginx configuration text.

    ``workers``/``api_upstreams`` are ``host:port`` strings; ``listen_ws``/``listen_http``
    a port or ``host:port``; ``run_dir`` gets pid, error log, temp dirs (and
    ``access.log`` if ``access_log``). With ``tls_cert``/``tls_key`` the charger port
    is wss (TLS 1.2+); with ``tls_client_ca`` nginx verifies client certificates
    (required when ``require_client_cert``, security profile 3) and passes the verified
    identity to the workers, which must trust it (``--trusted-proxies``).
    """
    if not workers:
        raise ValueError("at least one worker upstream is needed")
    if not api_upstreams:
        raise ValueError("at least one API upstream is needed")
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("TLS needs both a certificate and its key")
    if (tls_client_ca or require_client_cert) and not tls_cert:
        raise ValueError("client certificates need TLS (a certificate and its key)")
    if require_client_cert and not tls_client_ca:
        raise ValueError("required client certificates need the CA that issues them")
    tls_lines = []
    if tls_cert:
        tls_lines = [f"ssl_certificate {Path(tls_cert).resolve()};",
                     f"ssl_certificate_key {Path(tls_key).resolve()};",
                     "ssl_protocols TLSv1.2 TLSv1.3;",
                     "ssl_session_cache shared:chargeyard_tls:10m;"]
    if tls_client_ca:
        # an invalid certificate (expired, another CA) is refused here with 400; none at
        # all is refused too when required, else the worker decides by the charger's profile
        tls_lines += [f"ssl_client_certificate {Path(tls_client_ca).resolve()};",
                      f"ssl_verify_client {'on' if require_client_cert else 'optional'};",
                      "ssl_verify_depth 4;"]
    run = Path(run_dir).resolve()
    text = Path(template or default_template()).read_text()
    values = {
        "DAEMON": "on" if daemon else "off",
        "WORKER_PROCESSES": str(worker_processes),
        "WORKER_CONNECTIONS": str(int(worker_connections)),
        "RLIMIT_NOFILE": str(2 * int(worker_connections) + 1024),
        "RUN_DIR": str(run),
        "ACCESS_LOG": f"{run}/access.log" if access_log else "off",
        "WORKER_SERVERS": "\n".join(
            f"        server {_check_addr(w)} max_fails=1 fail_timeout=5s;" for w in workers),
        # every node serves the API: one that is down is skipped for a few seconds
        "API_SERVERS": "\n".join(
            f"        server {_check_addr(a)} max_fails=1 fail_timeout=2s;" for a in api_upstreams),
        "LISTEN_WS": _listen(listen_ws),
        "WS_SSL": " ssl" if tls_cert else "",
        "WS_TLS": "\n".join(f"        {line}" for line in tls_lines) or "        # plain ws (no --tls-cert)",
        "LISTEN_HTTP": _listen(listen_http),
        "WS_TIMEOUT": ws_timeout,
        "API_TIMEOUT": api_timeout,
        "SHUTDOWN_TIMEOUT": shutdown_timeout,
    }
    for key, val in values.items():
        text = text.replace(f"@@{key}@@", val)
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        raise ValueError(f"template placeholders without a value: {sorted(set(left))}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chargeyard nginx-config",
                                description="Print (or write) the nginx config for a cluster.")
    p.add_argument("--worker", dest="workers", action="append", required=True,
                   metavar="HOST:PORT", help="worker WebSocket upstream (repeat)")
    p.add_argument("--api", dest="api", action="append", required=True,
                   metavar="HOST:PORT", help="API node upstream (repeat)")
    p.add_argument("--ws-port", default=os.environ.get("CHARGEYARD_WS_PORT", "9000"),
                   help="listen for chargers (port or host:port)")
    p.add_argument("--http-port", default=os.environ.get("CHARGEYARD_HTTP_PORT", "8080"),
                   help="listen for the operator API (port or host:port)")
    p.add_argument("--run-dir", default="./data/nginx", help="pid, logs and temp files")
    p.add_argument("--access-log", action="store_true", help="write run-dir/access.log")
    p.add_argument("--daemon", action="store_true", help="let nginx daemonize")
    p.add_argument("--worker-processes", default="auto")
    p.add_argument("--worker-connections", type=int, default=65536,
                   help="per nginx worker process; each charger uses two")
    p.add_argument("--ws-timeout", default="3600s")
    p.add_argument("--shutdown-timeout", default="30s",
                   help="worker_shutdown_timeout: how long old nginx processes keep proxied "
                        "WebSockets after a reload")
    p.add_argument("--tls-cert", default="", help="PEM certificate chain: chargers connect with wss")
    p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    p.add_argument("--tls-client-ca", default="",
                   help="verify chargers' client certificates against this CA and pass the identity "
                        "(X-Client-Verify, X-Client-Cert-CN) to workers started with --trusted-proxies")
    p.add_argument("--require-client-cert", action="store_true",
                   help="refuse chargers without a valid client certificate (security profile 3)")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    a = p.parse_args(argv)
    text = render(a.workers, a.ws_port, a.api, a.http_port, run_dir=a.run_dir,
                  access_log=a.access_log, daemon=a.daemon,
                  worker_processes=a.worker_processes,
                  worker_connections=a.worker_connections, ws_timeout=a.ws_timeout,
                  shutdown_timeout=a.shutdown_timeout, tls_cert=a.tls_cert, tls_key=a.tls_key,
                  tls_client_ca=a.tls_client_ca, require_client_cert=a.require_client_cert)
    if a.output:
        Path(a.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
