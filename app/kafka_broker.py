"""A real Apache Kafka broker on 127.0.0.1, for ``chargeyard cluster`` and the tests.

One JVM in KRaft mode, broker and controller in one node, listening on free loopback
ports, its data under a directory of the caller's (so ``stop()`` + ``start()`` keeps every
topic, offset and producer state, as a real restart does).

The jars come from Maven Central through ``mvn dependency:copy-dependencies`` on the
``kafka/pom.xml`` shipped beside this module (package data; versions pinned there), copied once into
``~/.cache/chargeyard/kafka-<version>/libs`` (``CHARGEYARD_CACHE`` moves the cache);
later runs reuse them. Java 17 runs the broker (``JAVA_HOME`` or ``java`` on PATH).

Only the standard library is used here.

    with KafkaBroker(tmp_path / "kafka") as broker:   # formats, starts, waits for metadata
        ... broker.bootstrap ...                      # "127.0.0.1:<port>"
        broker.stop(); broker.start()                 # a restart keeps the data
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .procs import die_with_parent, kill_popen, stop_popen

KAFKA_VERSION = "4.1.1"  # keep equal to <kafka.version> in kafka/pom.xml
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"

_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = warn
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    root = os.environ.get("CHARGEYARD_CACHE") or Path.home() / ".cache" / "chargeyard"
    return Path(root) / f"kafka-{version}"


def ensure_jars(version: str = KAFKA_VERSION, *, timeout: float = 900.0) -> Path:
    """The directory of the broker's jars, fetched with mvn the first time (then cached).
    A fetch goes to a temporary directory renamed into place, so an interrupted one is
    simply done again."""
    libs = cache_dir(version) / "libs"
    if (libs / f"kafka_2.13-{version}.jar").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Apache Kafka's jars are fetched with Maven: install mvn (apt-get install maven)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = libs.parent / f"libs.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-Dkafka.version={version}", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if done.returncode != 0 or not (tmp / f"kafka_2.13-{version}.jar").exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"mvn could not fetch Apache Kafka {version}:\n{done.stdout[-4000:]}")
    try:
        tmp.rename(libs)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Apache Kafka needs Java 17 or newer (apt-get install openjdk-17-jre-headless)")
    return java


# -- readiness: one Kafka Metadata request (v4, the oldest a 4.x broker serves) --------


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """The brokers a Metadata request to host:port lists ([] if it fails in any way)."""
    client = b"chargeyard-probe"
    # header v1: api_key, api_version, correlation_id, client_id; body v4: topics=[] (none),
    # allow_auto_topic_creation=false
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv(s, 4))[0]
            buf = _recv(s, size)
    except (OSError, struct.error):
        return []
    try:
        corr, _throttle, n = struct.unpack_from(">iii", buf, 0)
        if corr != 7:
            return []
        pos, brokers = 12, []
        for _ in range(n):
            node, hlen = struct.unpack_from(">ih", buf, pos)
            pos += 6
            h = buf[pos:pos + hlen].decode()
            pos += hlen
            p, rlen = struct.unpack_from(">ih", buf, pos)
            pos += 6 + max(rlen, 0)
            brokers.append((node, h, p))
        return brokers
    except (struct.error, UnicodeDecodeError):
        return []


def _recv(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise OSError("connection closed")
        out += chunk
    return bytes(out)


class KafkaBroker:
    """One KRaft node (broker + controller). ``start()`` formats the data directory the
    first time, starts the JVM and returns once a Metadata request lists this broker.
    Ports are chosen once and kept across restarts (clients keep their bootstrap)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None,
                 controller_port: int | None = None, heap: str = "512m", version: str = KAFKA_VERSION,
                 partitions: int = 1, log_level: str = "INFO", extra: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.version = version
        self.partitions = partitions
        self.log_level = log_level
        self.extra = dict(extra or {})
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None  # how long the last start() took
        self._out: object = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- files ---------------------------------------------------------------------
    def _properties(self) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "true",
            # one node: every internal topic has one replica, and few partitions (each
            # partition costs start-up time on a 2-core machine)
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.flush.interval.messages": str(2**62),  # page cache, as in production
            **self.extra,
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J.format(log=self.log_file, level=self.log_level))
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        libs = ensure_jars(self.version)
        return [java_bin(), f"-Xmx{self.heap}", f"-Xms{min(128, int(self.heap.rstrip('mM') or 128))}m",
                "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir}",
                "-cp", str(libs / "*"), main, *args]

    def format(self) -> None:
        """``kafka-storage format`` (once: a formatted directory keeps its cluster id)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self._properties()
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cluster_id = _cluster_id()
        done = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                         "-c", str(props), "--ignore-formatted"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed:\n{done.stdout[-4000:]}")

    # -- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> KafkaBroker:
        if self.running():
            return self
        t0 = time.monotonic()
        self.format()
        props = self._properties()
        out = open(self.data_dir / "stdout.log", "ab")  # noqa: SIM115 (closed in _reap)
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent)
        self._out = out
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reap()
                raise RuntimeError(f"Kafka exited with {self.proc.returncode}:\n{self.tail()}")
            if any(p == self.port for _, _, p in metadata_brokers("127.0.0.1", self.port, timeout=1.0)):
                self.startup_s = time.monotonic() - t0
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"Kafka did not answer a metadata request within {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM), SIGKILL if it takes longer than ``timeout``."""
        if self.proc is None:
            return
        stop_popen(self.proc, timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the broker dies without a clean shutdown."""
        if self.proc is None:
            return
        kill_popen(self.proc)
        self._reap()

    def restart(self, timeout: float = 90.0) -> KafkaBroker:
        self.stop()
        return self.start(timeout)

    def _reap(self) -> None:
        if self._out is not None:
            self._out.close()  # type: ignore[attr-defined]
            self._out = None

    def tail(self, lines: int = 40) -> str:
        text = ""
        for f in (self.data_dir / "stdout.log", self.log_file):
            if f.exists():
                text += f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars),
    never starting with "-" (the storage tool would read it as an option)."""
    import base64
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


__all__ = ["KAFKA_VERSION", "KafkaBroker", "ensure_jars", "free_port", "metadata_brokers"]

if __name__ == "__main__":  # python -m chargeyard.kafka_broker DIR: a broker until Ctrl-C
    import sys
    b = KafkaBroker(sys.argv[1] if len(sys.argv) > 1 else "./kafka-data")
    b.start()
    print(f"Kafka {b.version} at {b.bootstrap} (started in {b.startup_s:.1f} s)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    b.stop()
