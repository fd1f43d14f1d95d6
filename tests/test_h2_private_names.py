"""
The private names of the C{h2} library that keda_proxy relies on, pinned.

setup.cfg bounds h2 to the release line tested; within it, a private name
can still change.  This test finds every private h2 name the sources touch
and compares the list with L{PINNED}, so that a new one is a decision made
in review, and checks that each still means what the code assumes, so that
an h2 upgrade that changes one fails here, by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import h2.connection
import h2.settings
import h2.stream
from h2.connection import ConnectionInputs, ConnectionState, H2Connection

import keda_proxy
from keda_proxy.wire._h2state import GracefulStateMachine, release

#: private h2 name -> the keda_proxy module that uses it
PINNED = {
    "_frame_dispatch_table": "keda_proxy/wire/_h2state.py",
    "_receive_frame": "keda_proxy/downstream/_h2guard.py",
    "_transitions": "keda_proxy/wire/_h2state.py",
}

SOURCES = Path(keda_proxy.__file__).resolve().parent


def h2_private_names() -> set:
    names = set()
    for cls in (h2.connection.H2Connection, h2.connection.H2ConnectionStateMachine,
                h2.stream.H2Stream, h2.stream.H2StreamStateMachine, h2.settings.Settings):
        names |= {n for n in dir(cls) if n.startswith("_") and not n.startswith("__")}
    names |= {n for n in vars(H2Connection()) if n.startswith("_")}
    return names


def test_the_private_h2_names_in_use_are_the_pinned_ones():
    used = {}
    for path in SOURCES.rglob("*.py"):
        text = path.read_text()
        for name in h2_private_names():
            quoted = re.escape(name)
            if re.search(r"\.%s\b|\bdef %s\(|[\"']%s[\"']" % (quoted, quoted, quoted), text):
                used[name] = str(path.relative_to(SOURCES.parent))
    assert used == PINNED


def test_receive_frame_is_h2s_per_frame_step():
    # the server's override sees every frame, and returns its events
    conn = H2Connection()
    seen = []

    class Watching(H2Connection):
        def _receive_frame(self, frame):
            seen.append(type(frame).__name__)
            return super()._receive_frame(frame)

    server = Watching(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    conn.initiate_connection()
    events = server.receive_data(conn.data_to_send())
    assert "SettingsFrame" in seen and events


def test_the_graceful_machine_keeps_a_connection_open_after_goaway():
    machine = GracefulStateMachine()
    for state in (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN,
                  ConnectionState.SERVER_OPEN):
        machine.state = state
        machine.process_input(ConnectionInputs.RECV_GOAWAY)
        assert machine.state is state
    # and h2's own still closes, so the replacement is what keeps it open
    stock = h2.connection.H2ConnectionStateMachine()
    stock.state = ConnectionState.CLIENT_OPEN
    stock.process_input(ConnectionInputs.RECV_GOAWAY)
    assert stock.state is ConnectionState.CLOSED


def test_a_released_connection_is_freed_by_reference_counting():
    import gc

    from h2.config import H2Configuration

    def served():
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        client.initiate_connection()
        server.initiate_connection()
        server.receive_data(client.data_to_send())
        client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"),
                                (b":authority", b"a"), (b":path", b"/")], end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(1, [(b":status", b"200")], end_stream=True)
        return client, server

    gc.collect()
    gc.disable()
    try:
        for conn in served():
            del conn
        assert gc.collect() > 0  # h2's own cycle: what release() is for
        for conn in served():
            release(conn)
            del conn
        assert gc.collect() == 0
    finally:
        gc.enable()
