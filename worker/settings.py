"""What the worker reads of the configuration, typed.

The app's ``Settings`` (CLI flags, environment, defaults) is composed into this by
``app/node.py``; the worker never imports the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WorkerSettings"]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    worker_id: str = "worker"
    host: str = "127.0.0.1"
    ws_port: int = 9000
    # the charger endpoint
    max_frame: int = 64 * 1024          # bytes; a larger message closes the connection (1009)
    ws_read_buffer: int = 1024          # picows' initial read buffer per connection (it grows)
    handshake_rate: float = 2000.0      # accepted WebSocket handshakes per second
    rate_limit: float = 200.0           # messages/s per connection (sustained)
    rate_burst: int = 400               # messages a connection may send at once
    max_pending_calls: int = 100        # CSMS->charger calls queued per charger
    ping_interval: float = 900.0        # ping after this long idle (0: off)
    idle_timeout: float = 1800.0        # close a connection whose ping is not answered by then
    drain_timeout: float = 10.0         # seconds a drain waits for the store and the chargers
    drain_rate: float = 500.0           # chargers closed per second by a drain (0: all at once)
    # answers to chargers
    heartbeat_interval: int = 300
    max_concurrent_boots: int = 200     # BootNotifications in flight before answering Pending
    boot_retry_interval: int = 60       # base of the jittered Pending retry interval (s)
    accept_unknown_tags: bool = False
    leniency_file: str = ""
    # the store
    batch_ms: float = 0.5               # most extra wait for a fuller batch when busy (ms)
    batch_max: int = 1000
    seen_interval: float = 30.0         # how often last_seen follows the chargers' messages (s)
    # events (store/events.py, worker/relay.py)
    kafka_bootstrap: str = ""           # empty: the relay hands the outbox to in-process sinks
    relay_drain_s: float = 5.0          # at shutdown, how long the relay may publish what is spooled
    # charger security (worker/security/): the node's minimum profile and what it needs
    security_profile: int = 0           # 0 anyone, 1 Basic, 2 TLS + Basic, 3 client certificate
    unknown_chargers: str = ""          # accept | reject ("": accept at profile 0, else reject)
    tls_cert: str = ""                  # wss:// on the charger port when set (with tls_key)
    tls_key: str = ""
    tls_client_ca: str = ""             # client certificates chain to this CA (profile 3)
    trusted_proxies: str = ""           # CIDRs whose identity headers are believed
    ca_cert: str = ""                   # the CSMS CA signing SignCertificate requests
    ca_key: str = ""
    # the key of the stored password verifiers (worker/security/authcache.py, ADR 0019):
    # auth_cache_key, else auth_cache_key_file, else <data_dir>/auth-cache.key (made once)
    auth_cache_key: str = field(default="", repr=False)
    auth_cache_key_file: str = ""
    data_dir: str = ""
