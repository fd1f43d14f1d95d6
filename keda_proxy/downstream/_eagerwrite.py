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

import errno

from twisted.internet.tcp import Connection

_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


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
        # the socket itself: writeSomeData adds a memoryview, a size cap
        # for old Windows and an EINTR loop, which Python already does
        try:
            sent = transport.socket.send(data)
        except OSError as e:
            # a full buffer: queue it all; a lost connection: leave it to
            # the reactor, which will notice
            sent = 0 if e.errno in _WOULD_BLOCK else None
        if sent is not None:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
