"""The rendered nginx front, run for real in front of two tiny aiohttp backends (the
rendering alone: tests/app/test_nginx_config.py)."""

from __future__ import annotations

import asyncio
import collections
import json

import aiohttp
import pytest
from aiohttp import web

from chargeyard import nginx_config, procs


async def _backend(name: str) -> tuple[web.AppRunner, int]:
    """Answers WebSockets with a hello naming itself, then echoes; HTTP with its name."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(protocols=("ocpp2.0.1", "ocpp1.6"))
            await ws.prepare(request)
            await ws.send_str(json.dumps({"backend": name, "path": request.path,
                                          "protocol": ws.ws_protocol}))
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str("echo:" + msg.data)
            return ws
        return web.json_response({"backend": name, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def test_nginx_hashes_chargers_and_proxies_websockets(tmp_path, arun):
    try:
        procs.find_nginx()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))

    async def body():
        runners = []
        proc = None
        try:
            ports = {}
            for name in ("w1", "w2", "api1"):
                runner, port = await _backend(name)
                runners.append(runner)
                ports[name] = port
            ws_port, http_port = procs.free_port(), procs.free_port()
            conf = tmp_path / "nginx.conf"
            conf.write_text(nginx_config.render(
                [f"127.0.0.1:{ports['w1']}", f"127.0.0.1:{ports['w2']}"], f"127.0.0.1:{ws_port}",
                [f"127.0.0.1:{ports['api1']}"], f"127.0.0.1:{http_port}",
                run_dir=tmp_path / "run", worker_processes=1, worker_connections=1024))
            proc = await asyncio.to_thread(procs.start_nginx, conf, tmp_path / "run", ws_port)
            base = f"http://127.0.0.1:{ws_port}"
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as s:

                async def hello(path: str, protocols=("ocpp1.6",)) -> dict:
                    async with s.ws_connect(base + path, protocols=protocols) as ws:
                        first = json.loads((await ws.receive(timeout=3)).data)
                        first["negotiated"] = ws.protocol
                        await ws.send_str('[2,"1","Heartbeat",{}]')
                        first["echo"] = (await ws.receive(timeout=3)).data
                    return first

                # (c) subprotocol passes through, frames flow both ways
                h = await hello("/ocpp/CP-42", ("ocpp2.0.1", "ocpp1.6"))
                assert h["negotiated"] == "ocpp2.0.1" and h["protocol"] == "ocpp2.0.1"
                assert h["path"] == "/ocpp/CP-42"
                assert h["echo"] == 'echo:[2,"1","Heartbeat",{}]'
                h16 = await hello("/ocpp/CP-42", ("ocpp1.6",))
                assert h16["negotiated"] == "ocpp1.6"

                # (a) the same id lands on the same backend, with or without /ocpp/
                first = h["backend"]
                for path in ["/ocpp/CP-42"] * 5 + ["/CP-42", "/ocpp/CP-42/"]:
                    assert (await hello(path))["backend"] == first, path

                # (b) 100 ids spread over both backends, each pinned
                by_id = {}
                for i in range(100):
                    by_id[i] = (await hello(f"/ocpp/CP-{i:04d}"))["backend"]
                spread = collections.Counter(by_id.values())
                assert set(spread) == {"w1", "w2"} and min(spread.values()) >= 20, spread
                for i in range(0, 100, 10):
                    assert (await hello(f"/CP-{i:04d}"))["backend"] == by_id[i]

                # no charger id -> 400 from nginx itself
                async with s.get(base + "/ocpp/") as resp:
                    assert resp.status == 400

                # the operator API and metrics go to the API nodes
                api = f"http://127.0.0.1:{http_port}"
                for path in ("/api/v1/chargers", "/metrics", "/healthz"):
                    async with s.get(api + path) as resp:
                        assert resp.status == 200
                        assert await resp.json() == {"backend": "api1", "path": path}
            print(f"nginx spread of 100 ids: {dict(spread)}")
        finally:
            if proc is not None:
                await asyncio.to_thread(proc.stop)
            for r in runners:
                await r.cleanup()

    arun(body(), timeout=40)
