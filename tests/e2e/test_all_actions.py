"""Every charger-initiated action of 1.6, 2.0.1 and 2.1 gets a schema-valid reply
(checked with jsonschema against the official response schema) over a real socket."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import jsonschema
import pytest
import websockets

from chargeyard.core.directions import CHARGER_INITIATED
from chargeyard.core.framing import MODULES
from tests.core.test_differential import Gen

SCHEMAS = Path(__file__).resolve().parents[2] / "core" / "schemas"
VDIR = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}
PROTO = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


def schema(version: str, action: str, kind: str) -> dict:
    return json.loads((SCHEMAS / VDIR[version] / MODULES[version].SCHEMA_FILES[(action, kind)])
                      .read_text(encoding="utf-8-sig"))


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_every_charger_initiated_action_gets_a_valid_reply(node, version):
    rng = random.Random(1234)
    mod = MODULES[version]
    actions = sorted(a for a in CHARGER_INITIATED[version] if a in mod.REQUESTS and a in mod.RESPONSES)
    assert len(actions) >= 14

    async def scenario():
        async with websockets.connect(node.ws(f"all-{version}"), subprotocols=[PROTO[version]]) as ws:
            for n, action in enumerate(actions):
                req = schema(version, action, "request")
                gen = Gen(req, rng, version != "1.6")
                for attempt in range(20):  # a payload the schema accepts (and no float ints)
                    payload = gen.valid(req)
                    if jsonschema.validators.validator_for(req)(req).is_valid(payload):
                        break
                await ws.send(json.dumps([2, f"a{n}", action, payload]))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert reply[0] == 3 and reply[1] == f"a{n}", (action, payload, reply)
                resp_schema = schema(version, action, "response")
                jsonschema.validators.validator_for(resp_schema)(
                    resp_schema, format_checker=jsonschema.FormatChecker()).validate(reply[2])

    asyncio.run(asyncio.wait_for(scenario(), 60))
