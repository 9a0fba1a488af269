"""Bearer tokens with scopes and charger ACLs from a tokens file (single node)."""

from __future__ import annotations

import json

from tests.support import NodeProc


def test_tokens_scopes_and_acl(tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({
        "reader": ["read"],
        "operator": {"scopes": ["command"], "chargers": ["site-a-*"]},
        "boss": ["admin"],
    }))
    n = NodeProc(tmp_path / "data", "--tokens-file", str(tokens)).start()

    def call(method, path, token=None, body=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return n.request(method, path, body, headers=headers)

    try:
        status, body = call("GET", "/api/v1/chargers")
        assert status == 401 and body["error"]["code"] == "unauthenticated"
        assert call("GET", "/api/v1/chargers", "wrong")[0] == 401
        assert call("GET", "/api/v1/chargers", "reader")[0] == 200
        # read scope cannot command; command scope is limited to its chargers
        status, body = call("POST", "/api/v1/chargers/site-a-1/calls/Reset", "reader", {"type": "Soft"})
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert call("POST", "/api/v1/chargers/site-a-1/calls/Reset", "operator", {"type": "Soft"})[0] == 404
        assert call("POST", "/api/v1/chargers/site-b-1/calls/Reset", "operator", {"type": "Soft"})[0] == 403
        # id tags need admin
        assert call("PUT", "/api/v1/id-tags/T1", "operator", {"status": "Accepted"})[0] == 403
        assert call("PUT", "/api/v1/id-tags/T1", "boss", {"status": "Accepted"})[0] == 200
        # health and metrics stay open for probes and Prometheus
        assert call("GET", "/healthz")[0] == 200 and call("GET", "/metrics")[0] == 200
    finally:
        n.stop()
