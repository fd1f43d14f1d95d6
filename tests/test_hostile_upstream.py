"""
Upstreams that misbehave: what they send must never reach another client,
hang a client, turn a client's connection into a tunnel, or run a request
twice.  Driven through the real Site, pipeline, pool and client protocol
over StringTransports (see L{tests.proxyfakes}).
"""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol

from keda_proxy.state._model import Timeouts
from tests.builders import endpoint_slice, route, service
from tests.netsupport import Client
from tests.proxyfakes import OK_5, Harness, response_body, response_headers, status_line
from tests.test_integration import Rig
from tests.test_proxy import warm


def _pooled():
    """A harness whose one upstream connection answered a GET and is idle
    in the pool."""
    h = Harness()
    warm(h)
    h.get()
    up = h.upstream()
    up.respond(OK_5)
    assert h.pool.idle_count() == 1
    return h, up


# -- 1. a response never reaches the wrong client -----------------------------

@pytest.mark.parametrize("first", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
])
def test_bytes_after_a_bodiless_response_never_answer_the_next_client(first):
    h = Harness()
    warm(h)
    _, victim_a = h.get()
    up = h.upstream()
    up.respond(first + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN")
    assert b"STOLEN" not in victim_a.value()
    assert up.transport.disconnecting and h.pool.idle_count() == 0
    _, victim_b = h.get()
    assert len(h.dials) == 2  # a new connection, not the poisoned one
    h.upstream().respond(OK_5)
    assert response_body(victim_b) == b"hello"


def test_a_body_sent_late_for_head_never_reaches_the_next_request():
    h = Harness()
    warm(h)
    h.send(b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    up = h.upstream()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
    _, victim = h.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi")
    assert len(h.dials) == 2 and b"POST" not in up.sent()  # the POST never went there
    up.respond(b"HTTP/1.1 200 OK\r\n\r\n")  # the sloppy body, late
    assert victim.value() == b""
    h.upstream().respond(OK_5)
    assert response_body(victim) == b"hello"


def test_bytes_on_an_idle_pooled_connection_close_it():
    h, up = _pooled()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN")
    assert up.transport.disconnecting
    up.close()
    assert h.pool.idle_count() == 0
    _, t = h.get()
    assert len(h.dials) == 2
    h.upstream().respond(OK_5)
    assert response_body(t) == b"hello"


# -- 2. framing ---------------------------------------------------------------

@pytest.mark.parametrize("coding", [b"xchunked", b"chunked, gzip", b"identity"])
def test_a_transfer_coding_that_is_not_chunked_is_answered_502_at_once(coding):
    h = Harness()
    warm(h)
    _, t = h.get()
    up = h.upstream()
    up.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n")
    assert status_line(t) == b"HTTP/1.1 502 Bad Gateway"
    assert up.transport.disconnecting or up.transport.disconnected


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello",
    b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\nhello",
])
def test_a_head_with_bare_lf_line_ends_is_read_as_go_reads_it(raw):
    h = Harness()
    warm(h)
    _, t = h.get()
    h.upstream().respond(raw)
    assert status_line(t) == b"HTTP/1.1 200 OK"
    assert response_body(t) == b"hello"


def test_a_bare_cr_in_a_bare_lf_head_is_still_refused():
    h = Harness()
    warm(h)
    _, t = h.get()
    h.upstream().respond(b"HTTP/1.1 200 OK\nX-A: 1\rX-B: 2\nContent-Length: 0\n\n")
    assert status_line(t) == b"HTTP/1.1 502 Bad Gateway"


def test_a_stalled_body_is_cut_at_the_request_timeout():
    h = Harness()
    warm(h, route(timeouts=Timeouts(request=5)))
    proto, t = h.get()
    up = h.upstream()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    h.clock.advance(4.9)
    assert not t.disconnecting
    h.clock.advance(0.2)
    assert t.disconnecting and up.transport.disconnecting
    proto.connectionLost(None)
    assert h.counter.get("default/web").concurrency == 0


# -- 3. protocol switches -----------------------------------------------------

@pytest.mark.parametrize("extra, response", [
    # nobody asked to switch
    (b"", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"),
    # asked for websocket, offered another protocol
    (b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"),
    # a 101 that does not say it upgrades
    (b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"),
])
def test_an_unsolicited_101_is_502_and_never_a_tunnel(extra, response):
    h = Harness()
    warm(h)
    proto, t = h.get(extra=extra)
    up = h.upstream()
    up.respond(response + b"\r\nraw bytes")
    assert status_line(t) == b"HTTP/1.1 502 Bad Gateway"
    assert b"raw bytes" not in t.value()
    assert getattr(t, "protocol", proto) is proto  # no tunnel took the connection
    assert up.transport.disconnecting or up.transport.disconnected


def test_a_requested_upgrade_matches_in_any_case():
    h = Harness()
    warm(h)
    _, t = h.get(extra=b"Connection: upgrade\r\nUpgrade: WebSocket\r\n")
    h.upstream().respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: keep-alive, Upgrade\r\n\r\n")
    assert status_line(t) == b"HTTP/1.1 101 Switching Protocols"


# -- 4. replays ---------------------------------------------------------------

@pytest.mark.parametrize("method", [b"DELETE", b"PUT", b"POST", b"PATCH"])
def test_a_non_idempotent_request_is_never_sent_twice(method):
    h, up = _pooled()
    _, t = h.send(method + b" / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert up.sent().count(method + b" / ") == 1
    up.close(ConnectionLost())  # dies before any response byte
    assert len(h.dials) == 1  # not replayed on a new connection
    assert status_line(t) == b"HTTP/1.1 502 Bad Gateway"


@pytest.mark.parametrize("method, extra", [
    (b"GET", b""), (b"HEAD", b""), (b"OPTIONS", b""), (b"TRACE", b""),
    (b"DELETE", b"Idempotency-Key: k1\r\n"), (b"POST", b"X-Idempotency-Key: k2\r\n"),
])
def test_an_idempotent_request_is_replayed_once_on_a_fresh_connection(method, extra):
    h, up = _pooled()
    h.send(method + b" / HTTP/1.1\r\nHost: example.com\r\n" + extra + b"\r\n")
    up.close(ConnectionDone())
    assert len(h.dials) == 2
    assert h.upstream().sent().startswith(method + b" / HTTP/1.1")


def test_a_request_the_upstream_began_to_answer_is_not_replayed():
    h, up = _pooled()
    _, t = h.get()
    up.respond(b"HTTP/1.1 200 O")
    up.close(ConnectionDone())
    assert len(h.dials) == 1
    assert status_line(t) == b"HTTP/1.1 502 Bad Gateway"


def test_garbage_on_a_reused_connection_is_502_not_a_replay():
    h, up = _pooled()
    _, t = h.get()
    up.respond(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert len(h.dials) == 1
    assert status_line(t) == b"HTTP/1.1 502 Bad Gateway"


# -- informational responses --------------------------------------------------

def test_early_hints_reach_an_http11_client_ahead_of_the_response():
    h = Harness()
    warm(h)
    _, t = h.get()
    h.upstream().respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
                         b"Connection: X-Hop\r\nX-Hop: 1\r\n\r\n"
                         b"HTTP/1.1 100 Continue\r\n\r\n" + OK_5)
    first, rest = t.value().split(b"\r\n\r\n", 1)
    assert first == b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload"
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"hello")
    assert b"100 Continue" not in t.value()


def test_an_http10_client_gets_no_informational_response():
    h = Harness()
    warm(h)
    _, t = h.send(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n")
    h.upstream().respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK_5)
    assert status_line(t) == b"HTTP/1.0 200 OK"
    assert response_headers(t)[b"content-length"] == [b"5"]


def test_endless_informational_responses_are_502():
    h = Harness()
    warm(h)
    _, t = h.send(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n")
    h.upstream().respond(b"HTTP/1.1 102 Processing\r\n\r\n" * 6 + OK_5)
    assert status_line(t) == b"HTTP/1.0 502 Bad Gateway"


# -- over real sockets ----------------------------------------------------------

class _Scripted(Protocol):
    """An upstream that answers each request head with the next scripted
    reply, whatever the request was."""

    def dataReceived(self, data):
        for _ in range(data.count(b"\r\n\r\n")):
            self.transport.write(self.factory.replies.pop(0))


@pytest_twisted.inlineCallbacks
def test_a_poisoned_pooled_connection_never_answers_another_real_client():
    factory = Factory.forProtocol(_Scripted)
    factory.replies = [
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean",
    ]
    upstream = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = upstream.getHost().port
    rig = Rig().start()
    try:
        rig.load(services=[service(ports=(("http", port),))],
                 slices=[endpoint_slice(ports=(("http", port),))])
        first = yield rig.client.http.get(rig.url(), headers={"Host": "web.example"})
        assert first.code == 204
        yield rig.client.close()  # the second request comes from another client
        second = yield Client().http.get(rig.url(), headers={"Host": "web.example"})
        assert (second.code, (yield second.content())) == (200, b"clean")
    finally:
        yield upstream.stopListening()
        yield rig.stop()
