"""The OpenAPI 3.1 description served at ``/api/v1/openapi.json``."""

from __future__ import annotations

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _op(summary: str, ok: str = "OK", errors: tuple[int, ...] = (), body: bool = False,
        params: tuple[str, ...] = (), query: tuple[str, ...] = ()) -> dict:
    op: dict = {"summary": summary, "responses": {"200": {"description": ok}}}
    for code in errors:
        op["responses"][str(code)] = _ERR
    ps = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    ps += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in query]
    if ps:
        op["parameters"] = ps
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    return op


OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Chargeyard operator API", "version": "1"},
    "servers": [{"url": "/api/v1"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "description": {"type": "string"}}}}}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/chargers": {"get": _op("List chargers: id, connected, protocol, vendor, model, last_seen")},
        "/chargers/{id}": {"get": _op("One charger with its connectors' last status", errors=(404,),
                                      params=("id",))},
        "/chargers/{id}/calls/{action}": {"post": _op(
            "Send a CSMS-initiated OCPP call; the body is its payload. 200 {result}; 404 not connected; "
            "422 payload invalid for the charger's version; 502 the charger answered CALLERROR; "
            "504 no answer within call_timeout", errors=(404, 422, 502, 503, 504), body=True,
            params=("id", "action"), query=("timeout",))},
        "/chargers/{id}/events": {"get": _op("Server-Sent Events: live status, meter and transaction "
                                             "updates", ok="text/event-stream", params=("id",))},
        "/transactions": {"get": _op("List transactions", query=("charger_id", "active"))},
        "/chargers/{id}/transactions/{tx}": {"get": _op(
            "One transaction: energy_wh, meter_start_wh, meter_stop_wh, started_at, stopped_at, id_tag, "
            "stop_reason", errors=(404,), params=("id", "tx"))},
        "/id-tags/{tag}": {
            "get": _op("Status of an id tag", errors=(404,), params=("tag",)),
            "put": _op("Set an id tag's status ({\"status\": \"Accepted\"})", errors=(422,), body=True,
                       params=("tag",)),
            "delete": _op("Remove an id tag (it becomes Invalid unless unknown tags are accepted)",
                          errors=(404,), params=("tag",)),
        },
    },
}
