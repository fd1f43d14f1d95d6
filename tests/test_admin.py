"""
The admin and metrics ports (keda_proxy.ops._adminsite): GET and HEAD only, no
request body ever read or stored, bounded and timed request heads.  Driven
over StringTransport on a MemoryReactorClock, plus one real-socket test.
"""

import json
import socket
import tempfile
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread

from keda_proxy._app import Interceptor
from keda_proxy.ops._adminsite import HEAD_TIMEOUT, MAX_HEAD_SIZE
from keda_proxy.ops._config import load_config
from keda_proxy.state._model import ALL_KINDS
from tests.builders import endpoint_slice, load, route, service

GIB = 1 << 30


@pytest.fixture
def clock():
    return MemoryReactorClock()


@pytest.fixture
def ic(clock):
    config = load_config({"KEDA_HTTP_PROXY_PORT": "1", "KEDA_HTTP_ADMIN_PORT": "2"})
    ic = Interceptor.build(clock, config, ALL_KINDS, plugins=())
    load(ic.store, routes=[route()], services=[service()], slices=[endpoint_slice()])
    return ic


@pytest.fixture(autouse=True)
def no_temp_files(monkeypatch):
    """twisted.web spools a large request body to a TemporaryFile: these
    ports never may."""

    def refuse(*a, **kw):
        raise AssertionError("a request body was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


class Conn:
    """One client connection to a site, over a StringTransport."""

    def __init__(self, site):
        self.channel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes):
        self.channel.dataReceived(data)

    def output(self) -> bytes:
        return self.transport.value()

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


def admin(ic):
    return Conn(ic.admin_site())


def metrics(ic):
    return Conn(ic.metrics_site())


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def headers(raw: bytes) -> dict:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in head)}


def body(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1]


def assert_refused_unread(conn: Conn, code: int):
    """Answered C{code}, closing, and nothing of the body kept: the request
    has no content, the line buffer is empty, and more body bytes change
    nothing."""
    out = conn.output()
    assert status(out) == code
    assert headers(out)[b"connection"] == b"close"
    assert conn.closed
    web = conn.channel.channel  # twisted.web's channel, behind the guard
    assert web.requests == []
    assert web.clearLineBuffer() == b""
    conn.send(b"x" * 1_000_000)
    assert conn.output() == out
    assert web.clearLineBuffer() == b""
    return out


# -- request bodies --------------------------------------------------------


def test_post_with_a_huge_content_length_is_405_without_reading_the_body(ic):
    c = admin(ic)
    c.send(b"POST /queue HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % GIB
           + b"x" * 4096)
    out = assert_refused_unread(c, 405)
    assert headers(out)[b"allow"] == b"GET, HEAD"
    assert body(out) == b"Method Not Allowed\n"


def test_chunked_post_is_405_without_reading_the_body(ic):
    c = admin(ic)
    c.send(b"POST /queue HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"1000\r\n" + b"x" * 4096)
    out = assert_refused_unread(c, 405)
    assert headers(out)[b"allow"] == b"GET, HEAD"


def test_body_sent_with_the_head_in_separate_reads_is_not_read(ic):
    c = admin(ic)
    c.send(b"PUT /queue HTTP/1.1\r\nHost: a\r\n")
    c.send(b"Content-Length: 10\r\n\r\n")
    assert_refused_unread(c, 405)


def test_no_100_continue_for_a_refused_body(ic):
    c = admin(ic)
    c.send(b"POST /queue HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
           b"Content-Length: %d\r\n\r\n" % GIB)
    out = assert_refused_unread(c, 405)
    assert b"100 Continue" not in out
    assert out.count(b"HTTP/1.1") == 1


def test_get_with_a_body_is_413(ic):
    c = admin(ic)
    c.send(b"GET /queue HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    out = assert_refused_unread(c, 413)
    assert b"allow" not in headers(out)
    assert body(out) == b"Request Entity Too Large\n"


def test_head_with_a_chunked_body_is_413_with_no_response_body(ic):
    c = admin(ic)
    c.send(b"HEAD /livez HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello")
    out = assert_refused_unread(c, 413)
    assert body(out) == b""
    assert headers(out)[b"content-length"] == b"%d" % len(b"Request Entity Too Large\n")


def test_a_pipelined_request_after_a_refused_body_is_not_answered(ic):
    c = admin(ic)
    c.send(b"POST /queue HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /queue HTTP/1.1\r\nHost: a\r\n\r\n")
    out = assert_refused_unread(c, 405)
    assert out.count(b"HTTP/1.1 ") == 1


# -- what still works ------------------------------------------------------


def test_get_queue_and_keep_alive(ic):
    c = admin(ic)
    for _ in range(3):
        c.send(b"GET /queue HTTP/1.1\r\nHost: a\r\n\r\n")
        out = c.take()
        assert status(out) == 200
        assert "default/web" in json.loads(body(out))
        assert not c.closed
    c.send(b"HEAD /livez HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert status(c.take()) == 200
    assert not c.closed


def test_bodyless_get_requests_pipelined_in_one_read(ic):
    c = admin(ic)
    c.send(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert c.output().count(b"HTTP/1.1 200 ") == 2
    assert not c.closed


def test_metrics_get_works_and_bodies_are_refused(ic):
    c = metrics(ic)
    c.send(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    out = c.take()
    assert status(out) == 200
    assert b"interceptor_request_concurrency" in body(out)
    c.send(b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % GIB
           + b"x" * 4096)
    assert headers(assert_refused_unread(c, 405))[b"allow"] == b"GET, HEAD"


def test_metrics_chunked_get_is_413(ic):
    c = metrics(ic)
    c.send(b"GET /metrics HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert_refused_unread(c, 413)


# -- slow and large heads --------------------------------------------------


@pytest.mark.parametrize("site", [admin, metrics])
def test_a_head_trickled_past_the_deadline_is_408(ic, clock, site):
    c = site(ic)
    # one byte every 10 s: the 60 s idle timeout never fires
    for byte in b"GET /queue HTTP/1.1\r\nHost":
        clock.advance(HEAD_TIMEOUT / 3 - 0.01)
        if c.closed:
            break
        c.send(bytes([byte]))
    out = c.output()
    assert status(out) == 408
    assert headers(out)[b"connection"] == b"close"
    assert c.closed
    assert clock.seconds() < HEAD_TIMEOUT + HEAD_TIMEOUT / 3


def test_the_head_deadline_is_thirty_seconds_from_the_connection(ic, clock):
    c = admin(ic)
    c.send(b"GET /queue HTTP/1.1\r\n")
    clock.advance(HEAD_TIMEOUT - 0.1)
    assert c.output() == b"" and not c.closed
    clock.advance(0.1)
    assert status(c.output()) == 408
    assert c.closed


def test_a_complete_head_cancels_the_deadline(ic, clock):
    c = admin(ic)
    c.send(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
    c.take()
    clock.advance(HEAD_TIMEOUT + 1)
    assert c.output() == b"" and not c.closed
    assert not [d for d in clock.getDelayedCalls() if d.func == c.channel._timed_out]


def test_a_kept_alive_connections_next_head_starts_its_own_deadline(ic, clock):
    c = admin(ic)
    c.send(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
    c.take()
    clock.advance(45)  # idle between requests: neither timeout
    assert not c.closed
    c.send(b"GET /queue HTTP/1.1\r\n")
    clock.advance(HEAD_TIMEOUT - 0.1)
    assert c.output() == b"" and not c.closed
    clock.advance(0.1)
    assert status(c.output()) == 408 and c.closed


def test_an_idle_kept_alive_connection_meets_the_idle_timeout(ic, clock):
    c = admin(ic)
    c.send(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
    c.take()
    clock.advance(59)
    assert not c.closed
    clock.advance(1)
    assert c.closed
    assert c.output() == b""


def test_connection_lost_cancels_the_head_deadline(ic, clock):
    c = admin(ic)
    c.send(b"GET /queue HTTP/1.1\r\n")
    c.channel.connectionLost(None)
    assert not [d for d in clock.getDelayedCalls() if d.active()
                and d.func == c.channel._timed_out]


def test_a_long_request_line_is_414(ic):
    c = admin(ic)
    c.send(b"GET /" + b"a" * MAX_HEAD_SIZE + b" HTTP/1.1\r\n")
    assert status(c.output()) == 414
    assert c.closed


def test_a_long_header_is_431(ic):
    c = admin(ic)
    c.send(b"GET /queue HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_SIZE)
    assert status(c.output()) == 431
    assert c.closed


def test_many_headers_over_the_head_limit_are_431(ic):
    c = admin(ic)
    line = b"X-Some: " + b"a" * 1000 + b"\r\n"
    c.send(b"GET /queue HTTP/1.1\r\n" + line * (MAX_HEAD_SIZE // len(line) + 1))
    assert status(c.output()) == 431
    assert c.closed


def test_a_head_just_under_the_limit_is_served(ic):
    c = admin(ic)
    first = b"GET /livez HTTP/1.1\r\nHost: a\r\n"
    pad = MAX_HEAD_SIZE - len(first) - len(b"X-Pad: ")
    c.send(first + b"X-Pad: " + b"a" * pad + b"\r\n\r\n")
    assert status(c.output()) == 200


def test_a_malformed_header_is_400_and_closes(ic):
    c = admin(ic)
    c.send(b"GET /queue HTTP/1.1\r\nno colon here\r\n\r\n")
    out = c.output()
    assert status(out) == 400
    assert headers(out)[b"connection"] == b"close"
    assert c.closed


# -- over a real socket ----------------------------------------------------


def _post_big_body(port: int):
    """A raw client: announce 1 GiB, send what the server will take (up to
    8 MiB), then read the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        s.sendall(b"POST /queue HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % GIB)
        chunk = b"x" * 65536
        try:
            while sent < 8 << 20:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server closed: the rest of the body is not wanted
        received = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            pass
        return received
    finally:
        s.close()


@pytest_twisted.inlineCallbacks
def test_big_post_over_a_real_socket_is_405_at_once():
    config = load_config({"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0"})
    ic = Interceptor.build(reactor, config, ALL_KINDS, plugins=())
    port = reactor.listenTCP(0, ic.admin_site(), interface="127.0.0.1")
    try:
        started = time.monotonic()
        received = yield deferToThread(_post_big_body, port.getHost().port)
        assert received.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert headers(received)[b"allow"] == b"GET, HEAD"
        assert time.monotonic() - started < 5
    finally:
        yield port.stopListening()
