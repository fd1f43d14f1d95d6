"""
Send now, queue only what the kernel refuses.

Twisted's C{transport.write} always queues and asks the reactor to watch
the socket for writability: two C{epoll_ctl} calls and one more trip round
the reactor for every message, which for a proxy's small messages costs
about as much as the rest of the request.  When nothing is queued already,
writing straight to the socket keeps the byte order and saves all of that;
whatever the socket does not take goes through the normal path, flow
control included.  TLS transports and anything unusual use the normal path.
"""

from __future__ import annotations

from twisted.internet.tcp import Connection


def eager_write(transport, data: bytes) -> None:
    if (
        data
        and isinstance(transport, Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
        # a lost connection: leave it to the reactor, which will notice
    transport.write(data)
