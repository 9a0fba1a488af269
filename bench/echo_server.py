"""The ceiling: a raw picows echo server on uvloop.

Every TEXT frame is sent back unchanged; the generator matches it by message id like
an OCPP reply. It negotiates the OCPP subprotocol like a real CSMS (cost only at the
handshake) and otherwise keeps picows' defaults, so it is the cheapest possible
server on the same stack as Chargeyard's worker.

    python -m chargeyard.bench.echo_server --host 127.0.0.1 --port 9000 [--read-buffer N]
"""

from __future__ import annotations

import argparse
import resource

from picows import (WSListener, WSMsgType, WSUpgradeResponse, WSUpgradeResponseWithListener,
                    ws_create_server)

SUPPORTED = ("ocpp1.6", "ocpp2.0.1", "ocpp2.1")


class Echo(WSListener):
    def on_ws_frame(self, transport, frame):
        mt = frame.msg_type
        if mt is WSMsgType.TEXT:
            transport.send(WSMsgType.TEXT, frame.get_payload_as_memoryview())
        elif mt is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


def listener_factory(request):
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    for proto in SUPPORTED:
        if proto in offered:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_101_response(
                    extra_headers={"Sec-WebSocket-Protocol": proto}), Echo())
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(400), None)


async def serve(host: str, port: int, read_buffer: int | None):
    kwargs = {"read_buffer_init_size": read_buffer} if read_buffer else {}
    server = await ws_create_server(listener_factory, host, port, backlog=4096, **kwargs)
    async with server:
        await server.serve_forever()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--read-buffer", type=int, default=None,
                    help="picows read_buffer_init_size (default: picows' own)")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop
    uvloop.run(serve(args.host, args.port, args.read_buffer))


if __name__ == "__main__":
    main()
