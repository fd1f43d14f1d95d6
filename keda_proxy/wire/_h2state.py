"""
h2's connection state machine, letting the streams a GOAWAY covers finish.

h2 (4.4) treats a GOAWAY it receives as the end of the connection and then
refuses every frame either way (python-hyper/h2#1181), where RFC 9113 §6.8
lets the streams the GOAWAY covers complete: an upstream shutting down
gracefully, a client closing its channel.  Both of the proxy's HTTP/2
sides use L{GracefulStateMachine} instead, and open no new stream after a
GOAWAY themselves.

And L{release}: an h2 connection refers to itself (its table of frame
handlers holds its own bound methods), a cycle that only a full collection
frees, which the interceptor runs rarely (L{keda_proxy._app.GC_THRESHOLDS}):
each closed connection would stay in memory with all it held.

Both touch private names of h2's (C{_transitions},
C{_frame_dispatch_table}); setup.cfg bounds h2 to the release line tested,
and tests/test_h2_private_names.py pins them.
"""

from __future__ import annotations

from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine

__all__ = ["GracefulStateMachine", "graceful", "release"]


class GracefulStateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, except that receiving a GOAWAY
    leaves an open connection open."""

    _transitions = dict(H2ConnectionStateMachine._transitions)
    for _state in (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN,
                   ConnectionState.SERVER_OPEN):
        _transitions[(_state, ConnectionInputs.RECV_GOAWAY)] = (None, _state)
    del _state


def graceful(connection):
    """Give an C{H2Connection} the graceful state machine; returns it."""
    connection.state_machine = GracefulStateMachine()
    return connection


def release(connection) -> None:
    """Break the cycle of a closed C{H2Connection}, so that reference
    counting frees it: it can frame nothing received any more, and it will
    receive nothing more."""
    vars(connection).pop("_frame_dispatch_table", None)
