"""
The gRPC side of ``bench_h2.py``: a grpcio echo server and a checking
client, with no generated code (a generic handler on raw bytes).

  ``grpc_echo.py serve PORT``
      a ``grpc.aio`` server on 127.0.0.1:PORT (plain text, HTTP/2 prior
      knowledge) whose one method, L{METHOD}, answers every request message
      with the same bytes.  Prints ``READY`` once listening; stops on
      SIGTERM or when its stdin closes.

  ``grpc_echo.py check HOST:PORT AUTHORITY N``
      N unary calls over one channel with ``:authority`` AUTHORITY (the
      interceptor routes on it), each with a different payload; exits 0 and
      prints ``OK N`` only if every call ended with status OK and echoed
      its payload, otherwise prints what went wrong and exits 1.

Not for other uses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"
#: The payload h2load sends (see L{grpc_frame}).
PAYLOAD = b"hello from the grpc bench client\n"


def grpc_frame(payload: bytes = PAYLOAD) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte length."""
    return struct.pack(">BI", 0, len(payload)) + payload


async def _serve(port: int) -> None:
    import grpc

    async def echo(request: bytes, context) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        sys.exit(f"could not listen on 127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(0, lambda: os.read(0, 4096) or stop.set())
    print("READY", flush=True)
    await stop.wait()
    await server.stop(0)


def _check(target: str, authority: str, n: int) -> int:
    import grpc

    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as ch:
        call = ch.unary_unary(METHOD)
        for i in range(n):
            payload = PAYLOAD + str(i).encode()
            try:
                got, rpc = call.with_call(payload, timeout=5)
            except grpc.RpcError as e:
                print(f"call {i}: {e.code()} {e.details()!r}")
                return 1
            if rpc.code() != grpc.StatusCode.OK or got != payload:
                print(f"call {i}: status {rpc.code()}, got {got[:60]!r}")
                return 1
    print(f"OK {n}")
    return 0


def main(argv) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        asyncio.run(_serve(int(argv[1])))
        return 0
    if len(argv) == 4 and argv[0] == "check":
        return _check(argv[1], argv[2], int(argv[3]))
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
