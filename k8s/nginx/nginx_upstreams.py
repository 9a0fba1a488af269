"""Keep nginx's charger upstreams equal to the ready worker pods (k8s/nginx.yaml).

nginx hashes each charger id onto the servers of ``upstream chargeyard_workers``
(``hash $charger_id consistent``, nginx/chargeyard.conf.template). The ring is built
from the server *names*, so the servers are the workers' stable DNS names
``chargeyard-worker-N.chargeyard-worker.<namespace>.svc:9000``: a worker that restarts
with a new pod IP keeps its place on the ring. nginx resolves those names when it loads
its configuration, and the template has no run-time resolver, so the configuration is
rendered again with ``chargeyard nginx-config`` and nginx reloaded (SIGHUP) whenever the
set of ready workers or one of their addresses changes: on every HPA scale event, pod
restart or drain.

The ready workers come from the EndpointSlices of the headless worker Service (Kubernetes
API, read-only RBAC in nginx.yaml). A name that does not resolve yet is left out until it
does, so a reload never fails on it. Runs in the chargeyard image:

    nginx_upstreams.py --once    render the first configuration (init container; waits
                                 for at least one ready worker)
    nginx_upstreams.py --watch   re-render and reload nginx on changes (sidecar; shares
                                 the pod's process namespace to signal nginx)

Settings (environment): POD_NAMESPACE, WORKER_SERVICE, WORKER_WS_PORT, API_UPSTREAM,
NGINX_WS_PORT, NGINX_HTTP_PORT, NGINX_CONF, NGINX_RUN_DIR, NGINX_WORKER_PROCESSES,
POLL_SECONDS, RELOAD_MIN_SECONDS; NGINX_TLS_CERT, NGINX_TLS_KEY, NGINX_TLS_CLIENT_CA,
NGINX_REQUIRE_CLIENT_CERT (chargers' TLS, k8s-overlays/tls); KUBE_API_URL overrides the
in-cluster API address.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def settings(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    return {
        "namespace": env.get("POD_NAMESPACE", "chargeyard"),
        "service": env.get("WORKER_SERVICE", "chargeyard-worker"),
        "worker_ws_port": env.get("WORKER_WS_PORT", "9000"),
        "api": env.get("API_UPSTREAM", "chargeyard-api.chargeyard.svc:8080"),
        "ws_port": env.get("NGINX_WS_PORT", "9000"),
        "http_port": env.get("NGINX_HTTP_PORT", "8080"),
        "conf": env.get("NGINX_CONF", "/etc/chargeyard-nginx/nginx.conf"),
        "run_dir": env.get("NGINX_RUN_DIR", "/run/nginx"),
        "worker_processes": env.get("NGINX_WORKER_PROCESSES", "auto"),
        "poll": env.get("POLL_SECONDS", "5"),
        "reload_min": env.get("RELOAD_MIN_SECONDS", "10"),
        "api_url": env.get("KUBE_API_URL", ""),
        # chargers' TLS, ended by nginx (k8s-overlays/tls): certificate files from a Secret
        "tls_cert": env.get("NGINX_TLS_CERT", ""),
        "tls_key": env.get("NGINX_TLS_KEY", ""),
        "tls_client_ca": env.get("NGINX_TLS_CLIENT_CA", ""),
        "require_client_cert": env.get("NGINX_REQUIRE_CLIENT_CERT", ""),
    }


def log(level: str, msg: str, **fields: object) -> None:
    """One JSON object per line, as the rest of Chargeyard logs."""
    rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
           "logger": "chargeyard.k8s.nginx_upstreams", "msg": msg, **fields}
    print(json.dumps(rec), flush=True)


# -- which workers are ready -----------------------------------------------------------

def kube_get(path: str, api_url: str = "") -> dict:
    """GET a Kubernetes API path with the pod's service account token."""
    headers = {"Accept": "application/json"}
    token_file = SA_DIR / "token"
    if token_file.is_file():  # re-read every time: projected tokens rotate
        headers["Authorization"] = "Bearer " + token_file.read_text().strip()
    ctx = None
    if not api_url:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        api_url = f"https://{host}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}"
    if api_url.startswith("https:"):
        ca = SA_DIR / "ca.crt"
        ctx = ssl.create_default_context(cafile=str(ca) if ca.is_file() else None)
    req = urllib.request.Request(api_url.rstrip("/") + path, headers=headers)
    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
        return json.load(resp)


def ready_endpoints(slices: dict) -> dict[str, tuple[str, ...]]:
    """EndpointSliceList -> {pod hostname: addresses} of the ready endpoints."""
    out: dict[str, tuple[str, ...]] = {}
    for sl in slices.get("items") or []:
        for ep in sl.get("endpoints") or []:
            # an absent `ready` means unknown, to be read as ready (EndpointSlice API)
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            host = ep.get("hostname")
            if host:
                out[host] = tuple(sorted(out.get(host, ()) + tuple(ep.get("addresses") or ())))
    return out


def _ordinal(hostname: str) -> tuple[int, str]:
    m = re.search(r"-(\d+)$", hostname)
    return (int(m.group(1)) if m else 1 << 30, hostname)


def upstream_names(hostnames, service: str, namespace: str) -> list[str]:
    """Stable DNS names of the StatefulSet pods, in ordinal order."""
    return [f"{h}.{service}.{namespace}.svc" for h in sorted(hostnames, key=_ordinal)]


def resolves(name: str) -> bool:
    try:
        return bool(socket.getaddrinfo(name, None, type=socket.SOCK_STREAM))
    except OSError:
        return False


def desired(cfg: dict[str, str], get=kube_get, resolve=resolves) -> list[tuple[str, tuple[str, ...]]]:
    """[(DNS name, addresses)] of the ready workers whose names resolve now."""
    sel = urllib.parse.quote(f"kubernetes.io/service-name={cfg['service']}", safe="")
    slices = get(f"/apis/discovery.k8s.io/v1/namespaces/{cfg['namespace']}/endpointslices"
                 f"?labelSelector={sel}", cfg["api_url"])
    eps = ready_endpoints(slices)
    out = []
    for host, name in zip(sorted(eps, key=_ordinal), upstream_names(eps, cfg["service"], cfg["namespace"])):
        if resolve(name):
            out.append((name, eps[host]))
        else:
            log("info", "worker ready but its name does not resolve yet; left out for now", name=name)
    return out


# -- rendering and reloading -------------------------------------------------------------

def nginx_config_argv(names: list[str], cfg: dict[str, str], output: str | None = None) -> list[str]:
    """The `chargeyard nginx-config` command line for these worker names."""
    argv = ["chargeyard", "nginx-config"]
    for n in names:
        argv += ["--worker", f"{n}:{cfg['worker_ws_port']}"]
    argv += ["--api", cfg["api"], "--ws-port", cfg["ws_port"], "--http-port", cfg["http_port"],
             "--run-dir", cfg["run_dir"], "--worker-processes", cfg["worker_processes"]]
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        if cfg.get(key):
            argv += ["--" + key.replace("_", "-"), cfg[key]]
    if cfg.get("require_client_cert", "").lower() in ("1", "true", "yes", "on"):
        argv.append("--require-client-cert")
    if output:
        argv += ["-o", output]
    return argv


def run_cli(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=30)


def write_config(names: list[str], cfg: dict[str, str]) -> None:
    """Render into a temporary file next to the target, then rename (atomic)."""
    conf = Path(cfg["conf"])
    tmp = conf.with_name(conf.name + ".new")
    run_cli(nginx_config_argv(names, cfg, str(tmp)))
    os.replace(tmp, conf)


def signal_nginx(cfg: dict[str, str]) -> bool:
    """SIGHUP to the nginx master (pid file in the run dir): reload, old workers finish
    their connections. False if nginx is not running yet (it reads the file at start)."""
    try:
        pid = int((Path(cfg["run_dir"]) / "nginx.pid").read_text().strip())
        os.kill(pid, signal.SIGHUP)
        return True
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False


def prepare_run_dir(cfg: dict[str, str]) -> None:
    """nginx writes its error log into the run dir: point it at nginx's own stderr."""
    run = Path(cfg["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    err = run / "error.log"
    if not err.is_symlink():
        err.unlink(missing_ok=True)
        err.symlink_to("/dev/stderr")


def once(cfg: dict[str, str], get=kube_get, resolve=resolves, sleep=time.sleep) -> list[str]:
    prepare_run_dir(cfg)
    while True:
        try:
            state = desired(cfg, get, resolve)
        except Exception as exc:  # API not reachable yet: keep waiting, visibly
            log("warning", "cannot list worker endpoints", error=repr(exc))
            state = []
        if state:
            names = [n for n, _ in state]
            write_config(names, cfg)
            log("info", "nginx config written", workers=names, conf=cfg["conf"])
            return names
        log("info", "waiting for a ready worker")
        sleep(2.0)


def watch(cfg: dict[str, str], get=kube_get, resolve=resolves, sleep=time.sleep,
          rounds: int | None = None) -> None:
    applied = None
    last_reload = float("-inf")
    poll, reload_min = float(cfg["poll"]), float(cfg["reload_min"])
    n = 0
    while rounds is None or n < rounds:
        n += 1
        try:
            state = desired(cfg, get, resolve)
        except Exception as exc:
            log("warning", "cannot list worker endpoints; nginx keeps its config", error=repr(exc))
            sleep(poll)
            continue
        if not state:
            log("warning", "no ready worker; nginx keeps its config")
        elif state != applied and time.monotonic() - last_reload >= reload_min:
            names = [nm for nm, _ in state]
            try:
                write_config(names, cfg)
            except (OSError, subprocess.SubprocessError) as exc:
                log("error", "rendering the nginx config failed; nginx keeps its config", error=repr(exc))
                sleep(poll)
                continue
            reloaded = signal_nginx(cfg)
            applied, last_reload = state, time.monotonic()
            log("info", "nginx upstreams updated", workers=names, reloaded=reloaded)
        sleep(poll)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true")
    mode.add_argument("--watch", action="store_true")
    a = p.parse_args(argv)
    cfg = settings()
    if a.once:
        once(cfg)
    else:
        watch(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
