"""``chargeyard-bench smoke --kafka``: the worker with and without a local Kafka broker in
the same run, end to end at toy size; the report's Kafka figures are there. Never a speed
threshold: the 1.15x criterion is the bench's verdict, not this test's."""

from __future__ import annotations

import json
import subprocess
import sys

from chargeyard.bench import kafka_variant


def test_smoke_with_kafka(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "chargeyard.bench.cli", "smoke", "--out", str(out), "--targets", "chargeyard",
         "--kafka", "--memory-levels", "", "--conn-levels", "", "--no-storm", "--rounds", "1", "--no-plots"],
        capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "latest" / "results.json").read_text())
    assert list(results["servers"]) == ["chargeyard", "chargeyard-bare", "chargeyard-kafka"]
    on = results["servers"]["chargeyard-kafka"]
    assert on["available"], on.get("unavailable")
    assert on["closed"]["msgs"] > 0 and on["closed"]["broker_cpu_us_per_msg"] > 0
    # the relay published to the broker in the closed window, and the consumer saw events
    assert on["closed"]["events_published_per_s"] > 0
    k = results["kafka"]
    assert k["available"] and k["rounds"] == 2 and len(k["per_round"]) == 2
    for r in k["per_round"]:
        assert r["cpu_us_per_msg_on"] > 0 and r["cpu_us_per_msg_off"] > 0 and r["ratio"] > 0
        assert r["cpu_us_per_msg_one_node"] > 0 and r["ratio_one_node"] > 0
    assert k["off_target"] == "chargeyard-bare"
    assert k["cpu_ratio_median"] > 0 and k["met"] in (True, False) and k["cpu_ratio_one_node_median"] > 0
    assert k["relay_events_per_s"] > 0 and k["relay_events_per_s_off"] > 0
    assert k["latency_records"] > 0 and 0 <= k["latency_p50_ms"] <= k["latency_p99_ms"]
    assert k["broker"]["bootstrap"].startswith("127.0.0.1:")
    assert "cpu_per_msg Kafka on <= 1.15x off" in results["targets"]
    report = (out / "latest" / "report.md").read_text()
    assert "## Kafka (the same run" in report
    for words in ("CPU per message, Kafka on / off", "relay at saturation", "commit -> consumer at half load",
                  "broker CPU"):
        assert words in report


def test_the_broker_never_shares_the_servers_cores(monkeypatch):
    monkeypatch.setattr(kafka_variant.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert kafka_variant.broker_cpus("0", "1") == "2,3"  # spare cores: like another machine
    monkeypatch.setattr(kafka_variant.os, "sched_getaffinity", lambda pid: {0, 1})
    assert kafka_variant.broker_cpus("0", "1") == "1"  # none spare: the generator's
    assert kafka_variant.broker_cpus(None, None) is None


def test_kafka_table_judges_the_median_ratio():
    def srv(role, cpu, **extra):
        return {"role": role, "available": True, "closed": {"cpu_us_per_msg": cpu, **extra}}
    results = {"servers": {"chargeyard": srv("chargeyard", 50.0, events_published_per_s=900.0),
                           "chargeyard-kafka": srv("chargeyard-kafka", 60.0, events_published_per_s=1000.0)},
               "rounds": [{"chargeyard": {"cpu_us_per_msg": 50.0}, "chargeyard-kafka": {"cpu_us_per_msg": 55.0}},
                          {"chargeyard": {"cpu_us_per_msg": 50.0}, "chargeyard-kafka": {"cpu_us_per_msg": 56.0}}]}
    k = kafka_variant.kafka_table(results)
    assert [r["ratio"] for r in k["per_round"]] == [1.2, 1.1, 1.12]
    assert k["cpu_ratio_median"] == 1.12 and k["met"] is True and k["relay_events_per_s"] == 1000.0
    results["rounds"] = []
    assert kafka_variant.kafka_table(results)["met"] is False  # one round: 1.2x
    # with the worker whose events nobody consumes in the run, Kafka on is judged against it
    results["servers"]["chargeyard-bare"] = srv("chargeyard-bare", 40.0)
    results["rounds"] = [{"chargeyard": {"cpu_us_per_msg": 50.0}, "chargeyard-bare": {"cpu_us_per_msg": 50.0},
                          "chargeyard-kafka": {"cpu_us_per_msg": 55.0}}]
    k = kafka_variant.kafka_table(results)
    assert k["off_target"] == "chargeyard-bare" and [r["ratio"] for r in k["per_round"]] == [1.5, 1.1]
    assert [r["ratio_one_node"] for r in k["per_round"]] == [1.2, 1.1]
    assert k["cpu_ratio_median"] == 1.3 and k["met"] is False
    del results["servers"]["chargeyard-kafka"]
    assert kafka_variant.kafka_table(results) is None
