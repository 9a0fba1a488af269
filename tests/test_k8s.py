"""k8s/ against the code: the manifests, the nginx sidecar and the Grafana dashboard must
agree with the CLI, the API routes, the metrics and the generated HPA.

Every check is a function returning a list of problems, run once on the real files
(which must have none) and again on deliberately broken copies (each of which must
be reported), so no check can silently stop checking. Nothing is started: command
lines go through the real argparse parsers, routes are read from the aiohttp router,
metric names from the prometheus_client registry.

"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
NAMESPACE = "chargeyard"


def load_yaml(text: str) -> list:
    """Every non-empty document of a YAML stream."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


# -- the manifests, loaded ------------------------------------------------------------

def load_manifests() -> dict:
    """{"kustomization", "docs": [(file, doc)], "hpa_text", "dashboard", "secret_example"}."""
    kust = load_yaml((K8S / "kustomization.yaml").read_text())[0]
    docs, missing = [], []
    for res in kust.get("resources") or []:
        path = K8S / res
        if not path.is_file():
            missing.append(res)
            continue
        docs += [(res, d) for d in load_yaml(path.read_text())]
    return {
        "kustomization": kust,
        "missing": missing,
        "docs": docs,
        "hpa_text": (K8S / "hpa.yaml").read_text(),
        "dashboard": json.loads((K8S / "grafana" / "chargeyard.json").read_text()),
        "secret_example": load_yaml((K8S / "tokens-secret.example.yaml").read_text())[0],
        "podmonitor": load_yaml((K8S / "monitoring" / "podmonitor.yaml").read_text())[0],
    }


@pytest.fixture(scope="module")
def manifests() -> dict:
    return load_manifests()


def objects(m: dict, kind: str | None = None) -> list[dict]:
    return [d for _, d in m["docs"] if kind is None or d.get("kind") == kind]


def one(m: dict, kind: str, name: str) -> dict | None:
    found = [d for d in objects(m, kind) if d.get("metadata", {}).get("name") == name]
    return found[0] if found else None


def workloads(m: dict) -> list[dict]:
    return [d for d in objects(m) if d.get("kind") in ("Deployment", "StatefulSet")]


def pod_spec(w: dict) -> dict:
    return w["spec"]["template"]["spec"]


def all_containers(w: dict) -> list[dict]:
    spec = pod_spec(w)
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def argv_of(c: dict) -> list[str]:
    return [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- what the code says ---------------------------------------------------------------

_SERVER_CMDS = ("run", "worker", "api")


class _Parsed(Exception):
    pass


def parse_chargeyard(argv: list[str]):
    """argv after `chargeyard` -> (argparse Namespace, None) or (None, error) through the
    real CLI; its settings step is intercepted, so nothing starts."""
    from chargeyard import cli

    got = {}

    def capture(args=None, env=None, **kw):
        got["args"] = args
        raise _Parsed

    saved = cli.from_sources
    cli.from_sources = capture
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.main(list(argv))
    except _Parsed:
        return got["args"], None
    except SystemExit as exc:
        return None, f"exit {exc.code}: {err.getvalue().strip().splitlines()[-1:] or ''}"
    finally:
        cli.from_sources = saved
    return None, "the command did not reach its settings (not a server command?)"


def render_nginx(argv: list[str], tmp: Path):
    """`chargeyard nginx-config ...` through its real parser -> (config text, None) or (None, error)."""
    from chargeyard import nginx_config

    out = tmp / "nginx.conf"
    args = list(argv)
    if "-o" in args:
        k = args.index("-o")
        del args[k:k + 2]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            nginx_config.main(args + ["-o", str(out)])
    except SystemExit as exc:
        return None, f"exit {exc.code}: {err.getvalue().strip()}"
    except ValueError as exc:
        return None, str(exc)
    return out.read_text(), None


def settings_of(args, env: list, from_configmaps: dict | None = None) -> object:
    """Settings as the container gets them: flags, then its literal env and the
    ``envFrom`` ConfigMap keys (``from_configmaps``), then defaults."""
    from chargeyard.config import from_sources

    literal = dict(from_configmaps or {})
    literal.update({e["name"]: str(e["value"]) for e in env or [] if "value" in e})
    return from_sources(args, env=literal)


@functools.cache
def api_routes() -> frozenset[tuple[str, str]]:
    """(method, path) of every route the operator API (and so every node) serves."""
    from chargeyard.config import Settings
    from chargeyard.router.api import Api

    app = Api(Settings(), None, None).app  # type: ignore[arg-type]
    return frozenset((r.method, r.resource.canonical) for r in app.router.routes())


@functools.cache
def exported_metrics() -> dict[str, str]:
    """Sample name -> type, for everything registered by the worker and router modules
    (plus prometheus_client's process collector, which /metrics also serves)."""
    import chargeyard.router.api  # noqa: F401
    import chargeyard.services.metrics  # noqa: F401
    import chargeyard.worker.metrics  # noqa: F401
    import chargeyard.worker.relay  # noqa: F401
    from prometheus_client import REGISTRY

    out: dict[str, str] = {}
    for fam in REGISTRY.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}.get(fam.type, ("",))
        for sfx in suffixes:
            out[fam.name + sfx] = fam.type
        for s in fam.samples:
            out.setdefault(s.name, fam.type)
    return out


def load_upstreams_script():
    spec = importlib.util.spec_from_file_location("nginx_upstreams", K8S / "nginx" / "nginx_upstreams.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def quantity(q) -> float:
    """Kubernetes resource quantity -> number (bytes, or cores)."""
    s = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[:-len(u)]) * f
    return float(s)


# -- checks -----------------------------------------------------------------------------

def check_kustomization(m: dict) -> list[str]:
    p = []
    k = m["kustomization"]
    if k.get("namespace") != NAMESPACE:
        p.append(f"kustomization namespace is {k.get('namespace')!r}, not {NAMESPACE!r}")
    p += [f"kustomization resource {r} does not exist" for r in m["missing"]]
    listed = set(k.get("resources") or [])
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml" and not path.name.endswith(".example.yaml") and path.name not in listed:
            p.append(f"{path.name} is not listed in kustomization resources")
    if "tokens-secret.example.yaml" in listed:
        p.append("the example Secret (placeholder tokens) must not be deployed by kustomization")
    for res, d in m["docs"]:
        if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind") or not (d.get("metadata") or {}).get("name"):
            p.append(f"{res}: a document without apiVersion, kind or metadata.name")
        elif d["metadata"].get("namespace") not in (None, NAMESPACE):
            p.append(f"{res}: {d['kind']} {d['metadata']['name']} sets another namespace")
    for gen in k.get("configMapGenerator") or []:
        for f in gen.get("files") or []:
            if not (K8S / f.split("=")[-1]).is_file():
                p.append(f"configMapGenerator {gen.get('name')}: file {f} does not exist")
    image_names = {i.get("name") for i in k.get("images") or []}
    for w in workloads(m):
        for c in all_containers(w):
            if c.get("image") not in image_names:
                p.append(f"{w['metadata']['name']}/{c['name']}: image {c.get('image')!r} is not set by kustomization images")
    return p


def hpa_target(m: dict, w: dict) -> int:
    """The connections-per-pod target of the HPA that scales workload ``w`` (0: none)."""
    for h in objects(m, "HorizontalPodAutoscaler"):
        ref = h["spec"].get("scaleTargetRef") or {}
        if ref.get("kind") != w.get("kind") or ref.get("name") != w["metadata"]["name"]:
            continue
        for mt in h["spec"].get("metrics") or []:
            if mt.get("type") == "Pods" and mt["pods"]["metric"]["name"] == "chargeyard_ws_connections":
                return int(float(str(mt["pods"]["target"]["averageValue"])))
    return 0


def drain_seconds(target: int, drain_rate: float, drain_timeout: float) -> float:
    """How long a worker holding ``target`` chargers takes to stop (worker/server.py
    Worker.drain): the chargers closed in waves at ``drain_rate`` per second (a store
    flush before each wave, the first one bounded by ``drain_timeout``), then up to
    ``drain_timeout`` for the last ones to close, then 5 s for the API, registry and
    store to close."""
    waves = target / drain_rate if drain_rate > 0 else 0.0
    return waves + 2 * drain_timeout + 5


def check_drain(m: dict) -> list[str]:
    """terminationGracePeriodSeconds follows from --drain-rate and the HPA's target
    (issue 23 item 2): a worker at the target must finish its drain before SIGKILL, and
    the rate its chargers reconnect at must leave every receiver half its handshake
    admission even with two workers (one receiver takes them all)."""
    p = []
    for w in workloads(m):
        for c in all_containers(w):
            argv = argv_of(c)
            if c.get("image") != "chargeyard" or argv[:1] != ["chargeyard"] or argv[1:2] not in (["run"], ["worker"]):
                continue
            where = f"{w['metadata']['name']}/{c['name']}"
            args, err = parse_chargeyard(argv[1:])
            if err:
                continue  # reported by check_chargeyard_containers
            try:
                s = settings_of(args, c.get("env") or [])
            except SystemExit:
                continue
            explicit = "--drain-rate" in argv or any(e["name"] == "CHARGEYARD_DRAIN_RATE" for e in c.get("env") or [])
            if not explicit:
                p.append(f"{where}: --drain-rate is not set in the manifest (the grace period is computed from it)")
            if s.drain_rate <= 0 or s.drain_rate > s.handshake_rate / 2:
                p.append(f"{where}: --drain-rate {s.drain_rate:g} must be > 0 and at most half of --handshake-rate "
                         f"{s.handshake_rate:g} (with 2 workers one receiver takes every reconnect)")
            target = hpa_target(m, w)
            grace = pod_spec(w).get("terminationGracePeriodSeconds", 30)
            need = drain_seconds(target, s.drain_rate, s.drain_timeout)
            if grace < need:
                p.append(f"{where}: terminationGracePeriodSeconds {grace} < {target} connections (HPA target) / "
                         f"drain rate {s.drain_rate:g} + 2 x drain timeout {s.drain_timeout:g} s + 5 s = "
                         f"{need:g} s: SIGKILL would cut the drain")
    return p


def check_nginx_hpa(m: dict, h: dict) -> list[str]:
    ref = h["spec"]["scaleTargetRef"]
    dep = one(m, "Deployment", ref.get("name"))
    if ref.get("kind") != "Deployment" or dep is None or ref.get("name") != "chargeyard-nginx":
        return [f"nginx HPA scaleTargetRef {ref} names no nginx Deployment of the manifests"]
    p = []
    if "replicas" in dep["spec"]:
        p.append("Deployment chargeyard-nginx sets replicas: its HPA owns the count")
    if h["spec"].get("minReplicas", 1) < 2:
        p.append("nginx HPA minReplicas below 2: one nginx is a single point of failure")
    cpu = [mt for mt in h["spec"].get("metrics") or [] if (mt.get("resource") or {}).get("name") == "cpu"]
    if not cpu:
        p.append("nginx HPA does not scale on CPU")
    nginx = [c for c in pod_spec(dep)["containers"] if c["name"] == "nginx"]
    if not nginx or "cpu" not in ((nginx[0].get("resources") or {}).get("requests") or {}):
        p.append("nginx container has no CPU request: a CPU-utilisation HPA cannot work")
    return p


def check_hpa(m: dict) -> list[str]:
    p = []
    hpas = objects(m, "HorizontalPodAutoscaler")
    if not hpas:
        return ["no HorizontalPodAutoscaler among the kustomization resources"]
    metrics = exported_metrics()
    for h in hpas:
        ref = h["spec"]["scaleTargetRef"]
        if h["metadata"]["name"] == "chargeyard-nginx":  # nginx scales on CPU (nginx-hpa.yaml)
            p += check_nginx_hpa(m, h)
            continue
        sts = one(m, ref.get("kind"), ref.get("name"))
        if ref.get("kind") != "StatefulSet" or ref.get("apiVersion") != "apps/v1" or sts is None:
            p.append(f"HPA scaleTargetRef {ref} names no StatefulSet of the manifests")
            continue
        if "replicas" in sts["spec"]:
            p.append(f"StatefulSet {ref['name']} sets replicas: the HPA owns the count (apply would reset it)")
        for mt in h["spec"].get("metrics") or []:
            name = (mt.get("pods") or {}).get("metric", {}).get("name")
            if mt.get("type") == "Pods" and metrics.get(name) != "gauge":
                p.append(f"HPA pods metric {name!r} is not a gauge the code exports")
        target = next((float(mt["pods"]["target"]["averageValue"]) for mt in h["spec"].get("metrics") or []
                       if mt.get("type") == "Pods"), None)
        workers = [c for c in pod_spec(sts)["containers"] if argv_of(c)[:2] == ["chargeyard", "worker"]]
        if len(workers) != 1:
            p.append(f"StatefulSet {ref['name']}: expected one `chargeyard worker` container, found {len(workers)}")
            continue
        res = workers[0].get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if quantity(req.get("cpu", 0)) != 1 or quantity(lim.get("cpu", 0)) != 1:
            p.append("worker CPU request and limit must both be 1 core (the HPA target was measured on one core)")
        kib = re.search(r"([\d.]+) KiB per idle\s*(?:#\s*)?connection", m["hpa_text"])
        budget = re.search(r"within (\d+(?:\.\d+)?) GiB", m["hpa_text"])
        if not kib or target is None:
            p.append("hpa.yaml: cannot find the KiB-per-connection figure or the target (template changed?)")
            continue
        conns = target * float(kib.group(1)) * 1024 * 1.25  # 25 % above the average: hash spread, HPA lag
        if budget:
            conns = max(conns, float(budget.group(1)) * 2**30)
        need = conns + 256 * 2**20  # the process, store driver, batches
        have = quantity(lim.get("memory", 0))
        if have < need or quantity(req.get("memory", 0)) < need:
            p.append(f"worker memory request/limit {req.get('memory')}/{lim.get('memory')} below {need / 2**20:.0f} Mi "
                     f"({target:.0f} connections x {kib.group(1)} KiB from hpa.yaml, with headroom)")
    return p


def check_selectors(m: dict) -> list[str]:
    p = []
    ws = workloads(m)
    for w in ws:
        name = w["metadata"]["name"]
        sel = w["spec"]["selector"].get("matchLabels") or {}
        if not matches(sel, w["spec"]["template"]["metadata"].get("labels") or {}):
            p.append(f"{w['kind']} {name}: selector {sel} does not match its pod template labels")
        others = [o for o in ws if o is not w and matches(sel, o["spec"]["template"]["metadata"].get("labels") or {})]
        if others:
            p.append(f"{w['kind']} {name}: selector also matches the pods of {others[0]['metadata']['name']}")
    for s in objects(m, "Service"):
        sel = s["spec"].get("selector") or {}
        targets = [w for w in ws if matches(sel, w["spec"]["template"]["metadata"].get("labels") or {})]
        if not targets:
            p.append(f"Service {s['metadata']['name']}: selector {sel} matches no pod template")
            continue
        ports = {pt.get("name"): pt.get("containerPort") for c in pod_spec(targets[0])["containers"]
                 for pt in c.get("ports") or []}
        for sp in s["spec"].get("ports") or []:
            tp = sp.get("targetPort", sp.get("port"))
            if (isinstance(tp, str) and tp not in ports) or (isinstance(tp, int) and tp not in ports.values()):
                p.append(f"Service {s['metadata']['name']}: targetPort {tp!r} is no container port of "
                         f"{targets[0]['metadata']['name']}")
    for pdb in objects(m, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"].get("matchLabels") or {}
        if not any(matches(sel, w["spec"]["template"]["metadata"].get("labels") or {}) for w in ws):
            p.append(f"PodDisruptionBudget {pdb['metadata']['name']}: selector matches no pod template")
    for sts in objects(m, "StatefulSet"):
        svc = one(m, "Service", sts["spec"].get("serviceName"))
        if svc is None or svc["spec"].get("clusterIP") != "None":
            p.append(f"StatefulSet {sts['metadata']['name']}: serviceName {sts['spec'].get('serviceName')!r} "
                     "is no headless Service (no stable pod DNS names for nginx)")
        elif not matches(svc["spec"].get("selector") or {}, sts["spec"]["template"]["metadata"].get("labels") or {}):
            p.append(f"headless Service {svc['metadata']['name']} does not select the StatefulSet's pods")
    return p


def _mount_for(c: dict, path: str) -> dict | None:
    best = None
    for vm in c.get("volumeMounts") or []:
        mp = vm["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"])):
            best = vm
    return best


def _probe_port(c: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    return next((pt["containerPort"] for pt in c.get("ports") or [] if pt.get("name") == port), None)


def check_chargeyard_containers(m: dict) -> list[str]:
    """Every `chargeyard <subcommand>` container: flags, ports, probes, mounts, drain."""
    from chargeyard.config import Settings

    p = []
    routes = api_routes()
    known_env = {"CHARGEYARD_" + f.upper() for f in Settings.__dataclass_fields__ if f != "extra"}
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in objects(m, "ConfigMap")}
    generated = {g["name"] for g in m["kustomization"].get("configMapGenerator") or []}
    secret = m["secret_example"]
    script = "/nginx_upstreams.py"
    for w in workloads(m) + objects(m, "Job"):
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in set(configmaps) | generated:
                p.append(f"{w['metadata']['name']}: volume {v['name']} uses unknown ConfigMap {v['configMap']['name']}")
            if "secret" in v and v["secret"]["secretName"] != secret["metadata"]["name"]:
                p.append(f"{w['metadata']['name']}: volume {v['name']} uses Secret {v['secret']['secretName']}, "
                         "not the one of tokens-secret.example.yaml")
        for c in all_containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            argv = argv_of(c)
            env = c.get("env") or []
            names = {e["name"] for e in env}
            env_from: dict = {}
            for ef in c.get("envFrom") or []:
                ref = ef.get("configMapRef")
                if not ref or ref["name"] not in configmaps:
                    p.append(f"{where}: envFrom {ef} is not a ConfigMap of the manifests")
                    continue
                for k, v in configmaps[ref["name"]].items():
                    if k.startswith("CHARGEYARD_") and k not in known_env:
                        p.append(f"{where}: ConfigMap {ref['name']} key {k} is no setting of app/config.py")
                    env_from[k] = str(v)
            names |= set(env_from)
            for e in env:
                if e["name"].startswith("CHARGEYARD_") and e["name"] not in known_env:
                    p.append(f"{where}: env {e['name']} is no setting of app/config.py")
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref and ref["key"] not in configmaps.get(ref["name"], {}):
                    p.append(f"{where}: env {e['name']} refers to missing ConfigMap key {ref['name']}/{ref['key']}")
            for a in argv:
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                    if var not in names:
                        p.append(f"{where}: $({var}) is not defined in the container's env (Kubernetes would pass it literally)")
            for vm in c.get("volumeMounts") or []:
                if vm["name"] not in volumes:
                    p.append(f"{where}: volumeMount {vm['name']} has no volume")
            if c.get("image") != "chargeyard":
                continue
            if len(argv) >= 2 and argv[0] == "python" and argv[1].endswith(script):
                continue  # nginx's sidecar, checked by check_nginx
            if argv[:1] != ["chargeyard"] or len(argv) < 2:
                p.append(f"{where}: command {argv[:2]} is not `chargeyard <subcommand>`")
                continue
            sub = argv[1]
            if sub == "nginx-config":
                continue
            args, err = parse_chargeyard(argv[1:])
            if err:
                p.append(f"{where}: `chargeyard {sub}` rejected its arguments ({err})")
                continue
            try:
                s = settings_of(args, env, env_from)
                if s.store == "scylla":
                    from chargeyard.node import scylla_options

                    scylla_options(s)
            except (SystemExit, ValueError) as exc:
                p.append(f"{where}: {exc}")
                continue
            if sub not in _SERVER_CMDS:
                continue
            try:
                s = settings_of(args, env, env_from)
            except SystemExit as exc:
                p.append(f"{where}: {exc}")
                continue
            ports = {pt.get("name"): pt.get("containerPort") for pt in c.get("ports") or []}
            expect = {"http": s.http_port}
            if sub in ("run", "worker"):
                expect["ws"] = s.ws_port
            if ports != expect:
                p.append(f"{where}: container ports {ports} do not match the flags ({expect})")
            if s.host.startswith("127.") or s.host in ("localhost", "::1"):
                p.append(f"{where}: --host {s.host} is unreachable from other pods")
            api_host = s.api_host or (s.host if s.tokens_file else "127.0.0.1")  # app/node.py
            if api_host.startswith("127.") or api_host in ("localhost", "::1"):
                p.append(f"{where}: the API, /metrics and the probes bind {api_host} (no --tokens-file, no --api-host)")
            if s.tokens_file:
                vm = _mount_for(c, s.tokens_file)
                vol = volumes.get(vm["name"]) if vm else None
                if not vol or "secret" not in vol or Path(s.tokens_file).name not in (secret.get("stringData") or {}) \
                        or Path(s.tokens_file).parent.as_posix() != vm["mountPath"].rstrip("/"):
                    p.append(f"{where}: --tokens-file {s.tokens_file} is not a key of the mounted tokens Secret")
            if (c.get("securityContext") or {}).get("readOnlyRootFilesystem"):
                vm = _mount_for(c, s.data_dir)
                if not vm or vm.get("readOnly"):
                    p.append(f"{where}: --data-dir {s.data_dir} is not on a writable volume (root file system read-only)")
            if s.store != "scylla" or not s.scylla_hosts:
                p.append(f"{where}: the cluster store must be --store scylla with --scylla-hosts (SQLite is per pod)")
            if not s.redis_url:
                p.append(f"{where}: no --redis-url: the pod would keep its own in-process registry")
            for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                probe = (c.get(kind) or {}).get("httpGet")
                if not probe:
                    p.append(f"{where}: no HTTP {kind}")
                    continue
                if probe.get("path") != path:
                    p.append(f"{where}: {kind} path {probe.get('path')!r}, expected {path}")
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = (c.get(kind) or {}).get("httpGet")
                if probe:
                    if ("GET", probe.get("path")) not in routes:
                        p.append(f"{where}: {kind} path {probe.get('path')!r} is not served by router/api.py")
                    if _probe_port(c, probe.get("port")) != s.http_port:
                        p.append(f"{where}: {kind} port {probe.get('port')!r} is not --http-port {s.http_port}")
            ann = w["spec"]["template"]["metadata"].get("annotations") or {}
            if ann.get("prometheus.io/scrape") != "true" or str(ann.get("prometheus.io/port")) != str(s.http_port) \
                    or ("GET", ann.get("prometheus.io/path")) not in routes or ann.get("prometheus.io/path") != "/metrics":
                p.append(f"{where}: Prometheus annotations must scrape /metrics on --http-port {s.http_port}")
            if sub == "worker":
                # a restarted pod must come back under the same id (registry epochs, lease)
                m_id = re.fullmatch(r"\$\((\w+)\)", s.worker_id)
                src = next((e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in env
                            if m_id and e["name"] == m_id.group(1)), None)
                if src != "metadata.name":
                    p.append(f"{where}: --worker-id must be the pod name ($(VAR) from fieldRef metadata.name)")
            if sub in ("run", "worker"):
                grace = spec.get("terminationGracePeriodSeconds", 30)
                # Worker.drain: store flush up to drain_timeout, then closing the chargers
                # up to drain_timeout again, then the API, registry and store close
                need = 2 * s.drain_timeout + 5
                if grace < need:
                    p.append(f"{where}: terminationGracePeriodSeconds {grace} < 2 x drain timeout "
                             f"{s.drain_timeout:g} s + 5 s: SIGKILL would cut the drain")
    return p


def check_nginx(m: dict, tmp: Path) -> list[str]:
    p = []
    dep = one(m, "Deployment", "chargeyard-nginx")
    sts = objects(m, "StatefulSet")
    api_svc = one(m, "Service", "chargeyard-api")
    api_dep = one(m, "Deployment", "chargeyard-api")
    if dep is None or len(sts) != 1 or api_svc is None or api_dep is None:
        return ["expected Deployments chargeyard-nginx and chargeyard-api, Service chargeyard-api, one StatefulSet"]
    sts = sts[0]
    spec = pod_spec(dep)
    mod = load_upstreams_script()
    nginx = next((c for c in spec["containers"] if c.get("image") == "nginx"), None)
    helpers = [c for c in all_containers(dep) if c.get("image") == "chargeyard"]
    if nginx is None or {argv_of(c)[-1] for c in helpers} != {"--once", "--watch"}:
        return ["nginx pod: needs the nginx container, a `--once` init container and a `--watch` sidecar"]
    worker = next((c for c in pod_spec(sts)["containers"] if argv_of(c)[:2] == ["chargeyard", "worker"]), None)
    api_c = next((c for c in pod_spec(api_dep)["containers"] if argv_of(c)[:2] == ["chargeyard", "api"]), None)
    if worker is None or api_c is None:
        return ["nginx: no `chargeyard worker` or `chargeyard api` container to take the ports from"]
    wargs, err = parse_chargeyard(argv_of(worker)[1:])
    aargs, err2 = parse_chargeyard(argv_of(api_c)[1:])
    if err or err2:
        return [f"worker or api arguments: {err or err2}"]
    try:
        ws = settings_of(wargs, worker.get("env"))
        api_http = settings_of(aargs, api_c.get("env")).http_port
    except SystemExit as exc:
        return [f"worker or api settings: {exc}"]
    api_port = next((sp for sp in api_svc["spec"]["ports"]
                     if sp.get("targetPort") in ("http", api_http)), None)
    nargv = argv_of(nginx)
    flag = {nargv[i]: nargv[i + 1] for i in range(len(nargv) - 1) if nargv[i].startswith("-")}
    nports = {pt["name"]: pt["containerPort"] for pt in nginx.get("ports") or []}
    cpu = (nginx.get("resources") or {}).get("limits", {}).get("cpu")
    expect = {
        "WORKER_SERVICE": sts["spec"]["serviceName"],
        "WORKER_WS_PORT": str(ws.ws_port),
        "API_UPSTREAM": f"chargeyard-api.{NAMESPACE}.svc:{api_port['port'] if api_port else '?'}",
        "NGINX_WS_PORT": str(nports.get("ocpp")),
        "NGINX_HTTP_PORT": str(nports.get("api")),
        "NGINX_CONF": flag.get("-c"),
        "NGINX_RUN_DIR": flag.get("-p"),
        "NGINX_WORKER_PROCESSES": str(quantity(cpu)).removesuffix(".0") if cpu else "?",
    }
    if api_port is None:
        p.append("Service chargeyard-api has no port to the API's --http-port")
    for h in helpers:
        env = {e["name"]: str(e["value"]) for e in h.get("env") or [] if "value" in e}
        fieldref = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in h.get("env") or []
                    if "fieldRef" in (e.get("valueFrom") or {})}
        if fieldref.get("POD_NAMESPACE") != "metadata.namespace":
            p.append(f"nginx/{h['name']}: POD_NAMESPACE must come from metadata.namespace")
        for k, v in expect.items():
            if env.get(k) != v:
                p.append(f"nginx/{h['name']}: {k}={env.get(k)!r}, expected {v!r}")
        for path in (env.get("NGINX_CONF", ""), env.get("NGINX_RUN_DIR", "") + "/nginx.pid"):
            vm = _mount_for(h, path)
            if not vm or vm.get("readOnly") or _mount_for(nginx, path) is None \
                    or _mount_for(nginx, path)["name"] != vm["name"]:
                p.append(f"nginx/{h['name']}: {path} is not on a writable volume shared with nginx")
        script = h["command"][1] if len(h.get("command") or []) > 1 else ""
        vm = _mount_for(h, script)
        vol = next((v for v in spec.get("volumes") or [] if vm and v["name"] == vm["name"]), None)
        gen = {g["name"]: g for g in m["kustomization"].get("configMapGenerator") or []}
        if not vol or "configMap" not in vol or vol["configMap"]["name"] not in gen or \
                "nginx/" + Path(script).name not in gen[vol["configMap"]["name"]].get("files", []):
            p.append(f"nginx/{h['name']}: {script} is not the generated ConfigMap of k8s/nginx/{Path(script).name}")
    if not spec.get("shareProcessNamespace"):
        p.append("nginx pod: shareProcessNamespace is needed for the sidecar to signal nginx")
    uids = {(c.get("securityContext") or {}).get("runAsUser", (spec.get("securityContext") or {}).get("runAsUser"))
            for c in all_containers(dep)}
    if len(uids) != 1 or None in uids:
        p.append(f"nginx pod: all containers must run as one uid to signal nginx, got {uids}")
    sa = spec.get("serviceAccountName")
    binding = next((b for b in objects(m, "RoleBinding") if any(s.get("name") == sa for s in b.get("subjects") or [])), None)
    role = one(m, "Role", binding["roleRef"]["name"]) if binding else None
    if not role or not any("endpointslices" in r.get("resources", []) and "list" in r.get("verbs", [])
                           for r in role.get("rules") or []):
        p.append(f"nginx pod: service account {sa!r} may not list endpointslices")
    # render exactly what the sidecar would, through `chargeyard nginx-config`'s parser
    cfg = mod.settings({"POD_NAMESPACE": NAMESPACE, **{k: v for k, v in expect.items() if v}})
    names = mod.upstream_names([f"{sts['metadata']['name']}-{i}" for i in (2, 0, 1)], cfg["service"], NAMESPACE)
    argv = mod.nginx_config_argv(names, cfg, str(tmp / "ignored.conf"))
    if argv[:2] != ["chargeyard", "nginx-config"]:
        p.append(f"the sidecar does not run `chargeyard nginx-config`: {argv[:2]}")
    text, err = render_nginx(argv[2:], tmp)
    if err:
        return p + [f"chargeyard nginx-config rejected the sidecar's arguments: {err}"]
    servers = re.findall(r"^\s*server (\S+) ", text.split("upstream chargeyard_workers")[1].split("}")[0], re.M)
    want = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc:{ws.ws_port}" for i in range(3)]
    if servers != want:
        p.append(f"nginx worker upstreams {servers}, expected the StatefulSet's DNS names {want}")
    if "hash $charger_id consistent;" not in text:
        p.append("nginx config lost `hash $charger_id consistent`")
    for port in nports.values():
        if not re.search(rf"^\s*listen {port};", text, re.M):
            p.append(f"nginx container port {port} is not a listen port of the rendered config")
    for kind in ("readinessProbe", "livenessProbe"):
        probe = (nginx.get(kind) or {}).get("httpGet") or {}
        if f"location = {probe.get('path')} " not in text or _probe_port(nginx, probe.get("port")) != nports.get("api"):
            p.append(f"nginx {kind} {probe} is not the config's health location on its http port")
    lb = one(m, "Service", "chargeyard-nginx")
    if not lb or lb["spec"].get("type") != "LoadBalancer" or \
            not any(sp.get("targetPort") == "ocpp" for sp in lb["spec"].get("ports") or []):
        p.append("Service chargeyard-nginx must be a LoadBalancer to nginx's ocpp port")
    return p


_PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev", "rate", "irate", "increase",
    "delta", "histogram_quantile", "vector", "scalar", "clamp_min", "clamp_max", "abs", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "label_values",
    "label_replace", "avg_over_time", "max_over_time", "min_over_time", "time", "absent", "sort", "sort_desc",
}


def promql_metrics(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)
    e = re.sub(r"\blabel_values\(([^,()]*),\s*\w+\s*\)", r"(\1)", e)  # Grafana: (metric, label)
    return {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e) if w not in _PROMQL_WORDS}


def check_dashboard(m: dict) -> list[str]:
    p = []
    d = m["dashboard"]
    exported = exported_metrics()
    exprs = []
    for panel in d.get("panels") or []:
        for t in panel.get("targets") or []:
            exprs.append((panel.get("title"), t.get("expr", "")))
    for var in d.get("templating", {}).get("list", []):
        q = var.get("query")
        if var.get("type") == "query":
            exprs.append((f"variable {var['name']}", q.get("query") if isinstance(q, dict) else q))
    if not exprs:
        p.append("the dashboard has no queries")
    for title, expr in exprs:
        for name in sorted(promql_metrics(expr)):
            if name not in exported:
                p.append(f"dashboard {title!r}: {name} is not exported by the code")
    hpa = objects(m, "HorizontalPodAutoscaler")
    target = next((str(mt["pods"]["target"]["averageValue"]) for h in hpa for mt in h["spec"]["metrics"]
                   if mt.get("type") == "Pods"), None)
    const = next((v.get("query") for v in d.get("templating", {}).get("list", []) if v.get("name") == "hpa_target"), None)
    if const != target:
        p.append(f"dashboard variable hpa_target={const!r}, but hpa.yaml's target is {target!r}")
    if not any("$hpa_target" in e for _, e in exprs):
        p.append("no dashboard panel compares connections per worker with $hpa_target")
    ids = [panel.get("id") for panel in d.get("panels") or []]
    if len(ids) != len(set(ids)):
        p.append("dashboard panel ids are not unique")
    return p


def check_secret_example(m: dict, tmp: Path) -> list[str]:
    from chargeyard.router.tokens import FileTokens

    p = []
    data = m["secret_example"].get("stringData") or {}
    for key, text in data.items():
        path = tmp / key
        path.write_text(text)
        try:
            FileTokens(path)
        except (ValueError, OSError) as exc:
            p.append(f"example Secret {key} is not a tokens file router/tokens.py accepts: {exc}")
    if not data:
        p.append("example Secret has no stringData")
    return p


def _store_flags(c: dict) -> dict:
    """The flags that choose the store, as a container gives them."""
    a = argv_of(c)
    return {f: a[a.index(f) + 1] for f in ("--store", "--scylla-hosts", "--keyspace") if f in a}


def check_migrate_job(m: dict) -> list[str]:
    """Schema changes run in one Job (`chargeyard store migrate`), on the store the pods use."""
    jobs = [(j, c) for j in objects(m, "Job") for c in pod_spec(j).get("containers") or []
            if argv_of(c)[:3] == ["chargeyard", "store", "migrate"]]
    if len(jobs) != 1:
        return [f"expected one Job running `chargeyard store migrate`, found {len(jobs)}"]
    job, c = jobs[0]
    p = []
    if pod_spec(job).get("restartPolicy") not in ("OnFailure", "Never"):
        p.append("store-migrate Job: restartPolicy must be OnFailure or Never")
    sts = objects(m, "StatefulSet")
    worker = next((w for s in sts for w in pod_spec(s)["containers"] if argv_of(w)[:2] == ["chargeyard", "worker"]),
                  None)
    if worker is not None and _store_flags(worker) != _store_flags(c):
        p.append(f"store-migrate Job migrates {_store_flags(c)}, the workers use {_store_flags(worker)}")
    if worker is not None and {e.get("configMapRef", {}).get("name") for e in worker.get("envFrom") or []} != \
            {e.get("configMapRef", {}).get("name") for e in c.get("envFrom") or []}:
        p.append("store-migrate Job and the workers read different ConfigMaps (envFrom)")
    return p


def _container_settings(m: dict, c: dict):
    """(argparse Namespace, Settings) of a `chargeyard ...` container, as its pod gets them."""
    args, err = parse_chargeyard(argv_of(c)[1:])
    if err:
        return None, None
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in objects(m, "ConfigMap")}
    env_from = {k: str(v) for ef in c.get("envFrom") or [] for k, v in
                configmaps.get((ef.get("configMapRef") or {}).get("name"), {}).items()}
    try:
        return args, settings_of(args, c.get("env") or [], env_from)
    except SystemExit:  # a bad value: reported by check_chargeyard_containers
        return args, None


def _running(m: dict, kinds: tuple[str, ...], argv: list[str]) -> list[tuple[dict, dict]]:
    return [(w, c) for w in objects(m) if w.get("kind") in kinds for c in pod_spec(w).get("containers") or []
            if argv_of(c)[:len(argv)] == argv]


def _scraped(podmonitor: dict, labels: dict) -> bool:
    sel = podmonitor["spec"]["selector"]
    if not all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    return all(labels.get(e["key"]) in e.get("values", []) for e in sel.get("matchExpressions") or []
               if e["operator"] == "In")


def check_services(m: dict) -> list[str]:
    """`chargeyard billing` / `monitoring`: one Deployment each, consuming the Kafka the
    workers publish to, keeping their state in the ScyllaDB store the API pods read,
    probed, scraped; and one Job creating the topic on that Kafka."""
    from chargeyard.services.topics import TOPIC

    p = []
    workers = _running(m, ("StatefulSet",), ["chargeyard", "worker"])
    apis = _running(m, ("Deployment",), ["chargeyard", "api"])
    worker = _container_settings(m, workers[0][1])[1] if workers else None  # None: reported elsewhere
    if worker is not None and not worker.kafka_bootstrap:
        p.append("the workers have no Kafka bootstrap (CHARGEYARD_KAFKA_BOOTSTRAP): no events reach the services")
    billing_replicas = 0
    for kind in ("billing", "monitoring"):
        found = _running(m, ("Deployment",), ["chargeyard", kind])
        if len(found) != 1:
            p.append(f"expected one Deployment running `chargeyard {kind}`, found {len(found)}")
            continue
        w, c = found[0]
        where = f"{w['metadata']['name']}/{c['name']}"
        _, s = _container_settings(m, c)
        if s is None:
            continue  # its arguments are reported by check_chargeyard_containers
        if not s.kafka_bootstrap:
            p.append(f"{where}: no Kafka bootstrap (--kafka-bootstrap or CHARGEYARD_KAFKA_BOOTSTRAP)")
        elif worker is not None and s.kafka_bootstrap != worker.kafka_bootstrap:
            p.append(f"{where}: consumes Kafka {s.kafka_bootstrap}, the workers publish to {worker.kafka_bootstrap}")
        if s.store != "scylla" or (apis and _store_flags(c) != _store_flags(apis[0][1])):
            p.append(f"{where}: its services store {_store_flags(c)} is not the ScyllaDB store the API pods read "
                     f"({_store_flags(apis[0][1]) if apis else 'no API'})")
        ports = {pt.get("name"): pt.get("containerPort") for pt in c.get("ports") or []}
        if ports != {"http": s.http_port}:
            p.append(f"{where}: container ports {ports} are not {{'http': --http-port {s.http_port}}}")
        if s.host.startswith("127.") or s.host in ("localhost", "::1"):
            p.append(f"{where}: --host {s.host}: /metrics and /healthz unreachable from Prometheus and the kubelet")
        for probe_kind in ("readinessProbe", "livenessProbe"):
            probe = (c.get(probe_kind) or {}).get("httpGet") or {}
            if probe.get("path") != "/healthz" or _probe_port(c, probe.get("port")) != s.http_port:
                p.append(f"{where}: {probe_kind} must be /healthz on --http-port (app/service_main.py serves "
                         "/metrics and /healthz only)")
        ann = w["spec"]["template"]["metadata"].get("annotations") or {}
        if ann.get("prometheus.io/scrape") != "true" or str(ann.get("prometheus.io/port")) != str(s.http_port) \
                or ann.get("prometheus.io/path") != "/metrics":
            p.append(f"{where}: Prometheus annotations must scrape /metrics on --http-port {s.http_port}")
        if not _scraped(m["podmonitor"], w["spec"]["template"]["metadata"].get("labels") or {}):
            p.append(f"{where}: the PodMonitor (k8s/monitoring/podmonitor.yaml) does not select its pods")
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            vm = _mount_for(c, str(Path(s.data_dir)))
            if not vm or vm.get("readOnly"):
                p.append(f"{where}: --data-dir {s.data_dir} is not on a writable volume (root file system read-only)")
        if kind == "billing":
            billing_replicas = w["spec"].get("replicas", 1)
        else:
            if w["spec"].get("replicas", 1) != 1 or (w["spec"].get("strategy") or {}).get("type") != "Recreate":
                p.append(f"{where}: one monitor (replicas 1, strategy Recreate): its timers cover every charger")
            if not s.redis_url:
                p.append(f"{where}: no --redis-url: the API pods' alert SSE would never see an alert")
    jobs = _running(m, ("Job",), ["chargeyard", "events", "create-topic"])
    if len(jobs) != 1:
        p.append(f"expected one Job running `chargeyard events create-topic`, found {len(jobs)}")
    else:
        job, c = jobs[0]
        args, s = _container_settings(m, c)
        if s is not None:
            if pod_spec(job).get("restartPolicy") not in ("OnFailure", "Never"):
                p.append("kafka-topic Job: restartPolicy must be OnFailure or Never")
            if worker is not None and s.kafka_bootstrap != worker.kafka_bootstrap:
                p.append(f"kafka-topic Job creates the topic on {s.kafka_bootstrap!r}, the workers publish to "
                         f"{worker.kafka_bootstrap!r}")
            if args.topic != TOPIC:
                p.append(f"kafka-topic Job creates {args.topic}, the relay publishes to {TOPIC}")
            if args.topic_partitions < billing_replicas:
                p.append(f"kafka-topic Job: {args.topic_partitions} partitions for {billing_replicas} billing replicas "
                         "(a replica without a partition idles)")
    return p


def all_problems(m: dict, tmp: Path) -> list[str]:
    return (check_kustomization(m) + check_hpa(m) + check_selectors(m) + check_chargeyard_containers(m)
            + check_drain(m) + check_nginx(m, tmp) + check_dashboard(m) + check_secret_example(m, tmp)
            + check_migrate_job(m) + check_services(m))


# -- the tests ----------------------------------------------------------------------------

def test_manifests_agree_with_the_code(manifests, tmp_path):
    assert all_problems(manifests, tmp_path) == []


def _worker(m):
    return next(c for c in pod_spec(one(m, "StatefulSet", "chargeyard-worker"))["containers"] if c["name"] == "worker")


def _api(m):
    return pod_spec(one(m, "Deployment", "chargeyard-api"))["containers"][0]


def _job(m):
    return pod_spec(objects(m, "Job")[0])["containers"][0]


def _svc(m, kind):
    return pod_spec(one(m, "Deployment", f"chargeyard-{kind}"))["containers"][0]


def _topic_job(m):
    return pod_spec(one(m, "Job", "chargeyard-kafka-topic"))["containers"][0]


def _drop_docs(m, kind, name):
    m["docs"][:] = [(f, d) for f, d in m["docs"] if (d.get("kind"), d["metadata"].get("name")) != (kind, name)]


def _sidecar_env(m, name):
    c = next(c for c in pod_spec(one(m, "Deployment", "chargeyard-nginx"))["containers"] if c["name"] == "upstreams")
    return next(e for e in c["env"] if e["name"] == name)


def _set_arg(c, flag, value):
    c["args"][c["args"].index(flag) + 1] = value


def _drop_arg(c, flag):
    k = c["args"].index(flag)
    del c["args"][k:k + 2]


def _expr(m, text):
    m["dashboard"]["panels"][1]["targets"][0]["expr"] = text


MUTATIONS = {
    "missing resource": (lambda m: m["missing"].append("gone.yaml"), "gone.yaml does not exist"),
    "nginx HPA replicas": (lambda m: one(m, "Deployment", "chargeyard-nginx")["spec"].update(replicas=2),
                           "its HPA owns the count"),
    "HPA target renamed": (lambda m: one(m, "StatefulSet", "chargeyard-worker")["metadata"].update(name="cy-worker"),
                           "names no StatefulSet"),
    "replicas in StatefulSet": (lambda m: one(m, "StatefulSet", "chargeyard-worker")["spec"].update(replicas=3),
                                "HPA owns the count"),
    "HPA metric unknown": (lambda m: objects(m, "HorizontalPodAutoscaler")[0]["spec"]["metrics"][0]["pods"]["metric"]
                           .update(name="chargeyard_connections"), "not a gauge"),
    "worker CPU 2": (lambda m: _worker(m)["resources"]["limits"].update(cpu="2"), "1 core"),
    "worker memory small": (lambda m: _worker(m)["resources"]["limits"].update(memory="512Mi"), "memory request/limit"),
    "selector drift": (lambda m: one(m, "Deployment", "chargeyard-api")["spec"]["selector"]["matchLabels"]
                       .update({"app.kubernetes.io/component": "apix"}), "does not match its pod template"),
    "service selects nothing": (lambda m: one(m, "Service", "chargeyard-worker")["spec"]["selector"]
                                .update({"extra": "x"}), "matches no pod template"),
    "PDB selects nothing": (lambda m: one(m, "PodDisruptionBudget", "chargeyard-worker")["spec"]["selector"]["matchLabels"]
                            .update({"extra": "x"}), "PodDisruptionBudget chargeyard-worker"),
    "unknown flag": (lambda m: _worker(m)["args"].append("--no-such-flag"), "rejected its arguments"),
    "unknown subcommand": (lambda m: _api(m).update(command=["chargeyard", "apiserver"]), "rejected its arguments"),
    "not chargeyard": (lambda m: _api(m).update(command=["gunicorn", "api"]), "is not `chargeyard <subcommand>`"),
    "bad int flag": (lambda m: _set_arg(_worker(m), "--ws-port", "nine"), "invalid value for --ws-port"),
    "port drift": (lambda m: _set_arg(_worker(m), "--ws-port", "9001"), "do not match the flags"),
    "probe path": (lambda m: _worker(m)["readinessProbe"]["httpGet"].update(path="/ready"), "not served"),
    "probe port": (lambda m: _api(m)["livenessProbe"]["httpGet"].update(port=9000), "is not --http-port"),
    "liveness on readyz": (lambda m: _worker(m)["livenessProbe"]["httpGet"].update(path="/readyz"), "expected /healthz"),
    "scrape port": (lambda m: one(m, "StatefulSet", "chargeyard-worker")["spec"]["template"]["metadata"]["annotations"]
                    .update({"prometheus.io/port": "9000"}), "Prometheus annotations"),
    "short grace": (lambda m: pod_spec(one(m, "StatefulSet", "chargeyard-worker"))
                    .update(terminationGracePeriodSeconds=15), "terminationGracePeriodSeconds 15"),
    "longer drain": (lambda m: _set_arg(_worker(m), "--drain-timeout", "20"), "2 x drain timeout 20"),
    "slower drain rate": (lambda m: _set_arg(_worker(m), "--drain-rate", "250"), "drain rate 250"),
    "drain rate above admission": (lambda m: _set_arg(_worker(m), "--drain-rate", "1500"), "half of --handshake-rate"),
    "drain rate implicit": (lambda m: _drop_arg(_worker(m), "--drain-rate"), "--drain-rate is not set"),
    "HPA target up": (lambda m: objects(m, "HorizontalPodAutoscaler")[0]["spec"]["metrics"][0]["pods"]["target"]
                      .update(averageValue="60000"), "60000 connections (HPA target)"),
    "no tokens": (lambda m: _drop_arg(_api(m), "--tokens-file"), "bind 127.0.0.1"),
    "tokens path": (lambda m: _set_arg(_worker(m), "--tokens-file", "/etc/chargeyard/tokens/t.json"),
                    "not a key of the mounted tokens Secret"),
    "sqlite": (lambda m: _set_arg(_worker(m), "--store", "sqlite"), "--store scylla"),
    "no redis": (lambda m: _drop_arg(_worker(m), "--redis-url"), "no --redis-url"),
    "worker id literal": (lambda m: _set_arg(_worker(m), "--worker-id", "worker"), "--worker-id must be the pod name"),
    "worker id not pod": (lambda m: _worker(m)["env"][0]["valueFrom"]["fieldRef"].update(fieldPath="spec.nodeName"),
                          "--worker-id must be the pod name"),
    "undefined var": (lambda m: _set_arg(_worker(m), "--worker-id", "$(HOSTNAME)"), "$(HOSTNAME) is not defined"),
    "configmap key": (lambda m: _worker(m)["env"][1]["valueFrom"]["configMapKeyRef"].update(key="REDIS"),
                      "missing ConfigMap key"),
    "unknown env setting": (lambda m: _worker(m)["env"].append({"name": "CHARGEYARD_NO_SUCH", "value": "1"}),
                            "no setting of app/config.py"),
    "configmap unknown setting": (lambda m: one(m, "ConfigMap", "chargeyard-config")["data"]
                                  .update({"CHARGEYARD_SCYLLA_NO_SUCH": "1"}), "no setting of app/config.py"),
    "configmap bad level": (lambda m: one(m, "ConfigMap", "chargeyard-config")["data"]
                            .update({"CHARGEYARD_SCYLLA_CONCURRENCY": "many"}), "invalid value for --scylla-concurrency"),
    "no migrate job": (lambda m: m["docs"].__setitem__(slice(None), [(f, d) for f, d in m["docs"]
                                                                      if d.get("kind") != "Job"]),
                       "`chargeyard store migrate`"),
    "migrate keyspace": (lambda m: _job(m)["args"].extend(["--keyspace", "other"]), "store-migrate Job migrates"),
    "migrate flag": (lambda m: _job(m)["args"].append("--scylla-no-such"), "rejected its arguments"),
    "data dir": (lambda m: _set_arg(_worker(m), "--data-dir", "/data"), "not on a writable volume"),
    "sidecar ws port": (lambda m: _sidecar_env(m, "WORKER_WS_PORT").update(value="9999"), "WORKER_WS_PORT"),
    "sidecar api": (lambda m: _sidecar_env(m, "API_UPSTREAM").update(value="chargeyard-api.chargeyard.svc:80"),
                    "API_UPSTREAM"),
    "sidecar service": (lambda m: _sidecar_env(m, "WORKER_SERVICE").update(value="workers"), "WORKER_SERVICE"),
    "sidecar processes": (lambda m: _sidecar_env(m, "NGINX_WORKER_PROCESSES").update(value="auto"),
                          "NGINX_WORKER_PROCESSES"),
    "headless service": (lambda m: one(m, "Service", "chargeyard-worker")["spec"].pop("clusterIP"), "no headless Service"),
    "no shared pids": (lambda m: pod_spec(one(m, "Deployment", "chargeyard-nginx")).pop("shareProcessNamespace"),
                       "shareProcessNamespace"),
    "no rbac": (lambda m: one(m, "Role", "chargeyard-nginx")["rules"][0].update(verbs=["get"]), "endpointslices"),
    "nginx probe": (lambda m: next(c for c in pod_spec(one(m, "Deployment", "chargeyard-nginx"))["containers"]
                                   if c["name"] == "nginx")["readinessProbe"]["httpGet"].update(path="/healthz"),
                    "health location"),
    "dashboard metric": (lambda m: _expr(m, "sum(chargeyard_ws_connection)"), "chargeyard_ws_connection is not exported"),
    "dashboard foreign metric": (lambda m: _expr(m, 'sum by (pod) (container_memory_working_set_bytes{pod=~"x"})'),
                                 "container_memory_working_set_bytes is not exported"),
    "dashboard hpa target": (lambda m: m["dashboard"]["templating"]["list"][-1].update(query="50000"), "hpa_target"),
    "secret format": (lambda m: m["secret_example"]["stringData"].update({"tokens.json": '{"t": ["root"]}'}),
                      "not a tokens file"),
    "unset image": (lambda m: _api(m).update(image="chargeyard-api"), "not set by kustomization images"),
    "no billing": (lambda m: _drop_docs(m, "Deployment", "chargeyard-billing"),
                   "one Deployment running `chargeyard billing`"),
    "no kafka": (lambda m: one(m, "ConfigMap", "chargeyard-config")["data"].pop("CHARGEYARD_KAFKA_BOOTSTRAP"),
                 "no Kafka bootstrap"),
    "services other kafka": (lambda m: _svc(m, "billing")["args"].extend(["--kafka-bootstrap", "other:9092"]),
                             "the workers publish to"),
    "services sqlite": (lambda m: _set_arg(_svc(m, "monitoring"), "--store", "sqlite"),
                        "is not the ScyllaDB store the API pods read"),
    "services keyspace": (lambda m: _svc(m, "billing")["args"].extend(["--keyspace", "billing"]),
                          "is not the ScyllaDB store the API pods read"),
    "services probe": (lambda m: _svc(m, "billing")["readinessProbe"]["httpGet"].update(path="/readyz"),
                       "readinessProbe must be /healthz"),
    "services port": (lambda m: _set_arg(_svc(m, "monitoring"), "--http-port", "9090"), "container ports"),
    "services loopback": (lambda m: _set_arg(_svc(m, "billing"), "--host", "127.0.0.1"), "unreachable"),
    "services not scraped": (lambda m: m["podmonitor"]["spec"]["selector"]["matchExpressions"][0]
                             .update(values=["worker", "api"]), "PodMonitor"),
    "two monitors": (lambda m: one(m, "Deployment", "chargeyard-monitoring")["spec"].update(replicas=2),
                     "one monitor"),
    "monitor rolling": (lambda m: one(m, "Deployment", "chargeyard-monitoring")["spec"].pop("strategy"),
                        "one monitor"),
    "monitor no redis": (lambda m: _drop_arg(_svc(m, "monitoring"), "--redis-url"), "alert SSE"),
    "no topic job": (lambda m: _drop_docs(m, "Job", "chargeyard-kafka-topic"), "`chargeyard events create-topic`"),
    "topic partitions": (lambda m: _set_arg(_topic_job(m), "--topic-partitions", "1"), "billing replicas"),
    "topic name": (lambda m: _topic_job(m)["args"].extend(["--topic", "events"]), "the relay publishes to"),
    "topic bad flag": (lambda m: _set_arg(_topic_job(m), "--topic-partitions", "many"), "rejected its arguments"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_check_catches_drift(manifests, tmp_path, name):
    mutate, expected = MUTATIONS[name]
    broken = copy.deepcopy(manifests)
    mutate(broken)
    problems = all_problems(broken, tmp_path)
    assert any(expected in p for p in problems), problems


# -- the nginx sidecar's own logic ------------------------------------------------------------

def _slices(*eps):
    return {"items": [{"endpoints": [
        {"hostname": h, "addresses": [a], "conditions": {} if r is None else {"ready": r}} for h, a, r in eps]}]}


def test_sidecar_renders_ready_workers_and_reloads_nginx(tmp_path, monkeypatch):
    import os
    import signal

    from chargeyard import nginx_config

    mod = load_upstreams_script()
    monkeypatch.setattr(mod, "run_cli", lambda argv: nginx_config.main(argv[2:]))
    cfg = mod.settings({"NGINX_CONF": str(tmp_path / "nginx.conf"), "NGINX_RUN_DIR": str(tmp_path / "run"),
                        "POLL_SECONDS": "0", "RELOAD_MIN_SECONDS": "0"})
    state = {"slices": _slices(("chargeyard-worker-10", "10.0.0.10", True), ("chargeyard-worker-2", "10.0.0.2", None),
                               ("chargeyard-worker-1", "10.0.0.1", False))}
    get = lambda path, url: state["slices"]  # noqa: E731
    unresolved = {"chargeyard-worker-10.chargeyard-worker.chargeyard.svc"}
    names = mod.once(cfg, get=get, resolve=lambda n: n not in unresolved, sleep=lambda s: None)
    # ready (or unknown) only, ordinal order, names that resolve only
    assert names == ["chargeyard-worker-2.chargeyard-worker.chargeyard.svc"]
    assert (tmp_path / "run" / "error.log").readlink() == Path("/dev/stderr")
    assert "server chargeyard-worker-2.chargeyard-worker.chargeyard.svc:9000 " in (tmp_path / "nginx.conf").read_text()

    hups = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: hups.append((pid, sig)))
    (tmp_path / "run" / "nginx.pid").write_text("4242\n")
    rounds = [state["slices"], state["slices"],
              _slices(("chargeyard-worker-10", "10.0.0.99", True), ("chargeyard-worker-2", "10.0.0.2", True))]
    seen = []

    def get_round(path, url):
        seen.append(path)
        return rounds[len(seen) - 1]

    mod.watch(cfg, get=get_round, resolve=lambda n: True, sleep=lambda s: None, rounds=3)
    assert "labelSelector=kubernetes.io%2Fservice-name%3Dchargeyard-worker" in seen[0]
    text = (tmp_path / "nginx.conf").read_text()
    assert re.findall(r"server (chargeyard-worker-\d+)\.", text) == ["chargeyard-worker-2", "chargeyard-worker-10"]
    # round 1 applies, round 2 sees no change, round 3 the same names with a new pod IP:
    # nginx resolved the names at its last load, so it must load again
    assert hups == [(4242, signal.SIGHUP), (4242, signal.SIGHUP)]
