"""The generator's frames are schema-valid OCPP and its bookkeeping is right.

Fast, no sockets: the pre-encoded templates are checked against the official JSON
schemas shipped in chargeyard.core, so the benchmark measures real traffic.
"""

import json
from importlib import resources

import orjson
import pytest

from chargeyard.bench import capacity, frames, runner
from chargeyard.bench.loadgen import HIST_SCALE, hist_percentiles

jsonschema = pytest.importorskip("jsonschema")


def schema(version: str, action: str) -> dict:
    name = f"{action}.json" if version == "v16" else f"{action}Request.json"
    ref = resources.files("chargeyard.core") / "schemas" / version / name
    return json.loads(ref.read_text())


def check(version: str, frame: bytes):
    msg = orjson.loads(frame)
    assert msg[0] == 2 and isinstance(msg[1], str)
    jsonschema.validate(msg[3], schema(version, msg[2]))
    return msg


def test_ocpp16_frames_are_schema_valid():
    msg = check("v16", frames.meter_values16(42, 123456, 4) % (b"17", 5))
    assert msg[1] == "17"
    p = msg[3]
    assert p["connectorId"] == 1 and p["transactionId"] == 42
    sampled = p["meterValue"][0]["sampledValue"]
    assert len(sampled) == 4
    energy = sampled[0]
    assert energy["measurand"] == "Energy.Active.Import.Register" and energy["unit"] == "Wh"
    assert energy["value"] == "123456"
    assert p["meterValue"][0]["timestamp"].endswith(".000005Z")
    for action, payload in (frames.boot16(), frames.status16("Charging"), frames.start16(100)):
        check("v16", frames.call(action, payload, b"1"))
    check("v16", frames.heartbeat_template() % b"9")


def test_ocpp201_frames_are_schema_valid():
    msg = check("v201", frames.tx_event201("tx-1", 5000, 4) % (b"3", 42, 7, 42))
    assert msg[3]["seqNo"] == 7
    assert msg[3]["timestamp"] == msg[3]["meterValue"][0]["timestamp"] and msg[3]["timestamp"].endswith(".000042Z")
    assert len(msg[3]["meterValue"][0]["sampledValue"]) == 4
    for action, payload in (frames.boot201(), frames.status201("Occupied"),
                            frames.start201("tx-1", 5000)):
        check("v201", frames.call(action, payload, b"1"))


def test_templates_survive_percent_signs():
    t = frames._template("DataTransfer", {"vendorId": "x", "data": "100%"})
    assert orjson.loads(t % b"5")[3]["data"] == "100%"


def test_reply_id_matches_without_parsing():
    assert frames.reply_id(b'[3,"123",{"currentTime":"x"}]') == b"123"
    assert frames.reply_id(b'[4,"77","NotImplemented","",{}]') == b"77"
    assert frames.reply_id(b'[3, "9", {}]') == b"9"


def test_hist_percentiles():
    hist = {int(10 * HIST_SCALE): 99, int(20 * HIST_SCALE): 1}  # 2**10 us, 2**20 us
    p = hist_percentiles(hist)
    assert 1.0 < p[0.5] < 1.1          # ~1.02 ms
    assert 1000 < p[0.999] < 1100      # ~1 s
    assert hist_percentiles({})[0.99] is None


def test_prometheus_histogram_delta():
    before = 'chargeyard_db_batch_rows_bucket{le="1.0"} 1\nchargeyard_db_batch_rows_bucket' \
             '{le="+Inf"} 2\nchargeyard_db_batch_rows_sum 11\nchargeyard_db_batch_rows_count 2\n'
    after = 'chargeyard_db_batch_rows_bucket{le="1.0"} 1\nchargeyard_db_batch_rows_bucket' \
            '{le="+Inf"} 6\nchargeyard_db_batch_rows_sum 411\nchargeyard_db_batch_rows_count 6\n'
    d = runner.histogram_delta(before, after, "chargeyard_db_batch_rows")
    assert d["count"] == 4 and d["sum"] == 400 and d["mean"] == 100
    assert d["p50_le"] == "+Inf"
    assert runner.histogram_delta(None, after, "chargeyard_db_batch_rows") is None


def test_capacity_table_from_minimal_results():
    server = {"role": "chargeyard", "available": True,
              "closed": {"msgs_per_s": 20000, "server_util": 1.0, "cpu_us_per_msg": 50.0},
              "metering": {"msgs_per_s": 1000, "server_util": 0.2, "cpu_us_per_msg": 200.0},
              "memory": {"levels": [{"conns": 10000, "kib_per_conn": 16.0}],
                         "storm": {"chargers": 10000, "reconnects_per_s": 500,
                                   "cpu_us_per_reconnect": 500}}}
    from chargeyard.bench import suite
    profiles = {p: suite.load_profile(p) for p in capacity.PROFILES}
    cap = capacity.table({"servers": {"cy": server}}, profiles)
    assert {r["profile"] for r in cap["rows"]} == set(capacity.PROFILES)
    assert cap["conns_per_worker"]["reconnect-storm"] <= 500 * 60
    assert 100 <= cap["hpa_target_conns_per_worker"] <= 50000
    yaml = capacity.hpa_yaml(cap, "x/results.json")
    assert "name: chargeyard_ws_connections" in yaml and "type: Pods" in yaml
