"""HTTP/2 upstreams in the pool and on the request path: streams multiplexed
on pooled connections, the upstream's stream limit, GOAWAY, idle close,
dials shared while under way, the h2c scheme of a Service port, ALPN, and
warm connections to starting pods.  All in memory: the pipeline's fakes
(tests/proxyfakes.py) and an h2 server (tests/h2fakes.py)."""

import attrs
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, StreamReset
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import INegotiated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from keda_proxy.steps import ProxySettings
from keda_proxy.steps._targets import ServiceTargets
from keda_proxy.upstream._alpn import ALPNSwitch
from keda_proxy.upstream._http1client import CLOSED, UpstreamConnection
from keda_proxy.upstream._http2client import (
    ASSUMED_MAX_STREAMS,
    H2ClientConnection,
    H2Stream,
)
from keda_proxy.upstream._pool import FRESH_ENOUGH, ConnectionPool
from keda_proxy.upstream._prewarm import PodWarmer
from keda_proxy.upstream._schemes import H2C_APP_PROTOCOL, http1_key
from tests.builders import endpoint_slice, load, route, service
from tests.h2fakes import GET, Sink, handshake
from tests.proxyfakes import FakeEndpoints, Harness, status_line
from tests.test_prewarm import starting

KEY = (b"h2c", "web.default", 8080, "web.default")
#: the default route's ready pod (tests.builders.endpoint_slice), as h2c
POD = (b"h2c", "127.0.0.1", 8080, "web.default")
OK = [(b":status", b"200"), (b"content-length", b"5")]


def pool(**kw):
    clock = Clock()
    endpoints = FakeEndpoints()
    return clock, endpoints, ConnectionPool(clock, endpoints.endpoint_for, **kw)


def dialled(endpoints, i=-1, settings=None):
    """Let dial C{i} connect; its upstream's server, handshake done."""
    up = endpoints.dials[i].succeed()
    return handshake(up.protocol, up.transport, settings)


def get(stream):
    sink = Sink()
    stream.send(b"GET", GET, sink)
    return sink


def goaway(last_stream_id) -> bytes:
    return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0).serialize()


# -- the pool -------------------------------------------------------------------


def test_requests_share_one_connection_as_streams():
    clock, endpoints, p = pool()
    d = p.connect(KEY, 1)
    server = dialled(endpoints)
    first = d.result
    assert isinstance(first, H2Stream)
    a = get(first)
    second = p.take_idle(KEY)
    assert second is not None and second.connection is first.connection
    b = get(second)
    server.read()
    assert sorted(server.requests()) == [1, 3]
    server.respond(1, OK, b"hello")
    server.respond(3, OK, b"world")
    assert (a.body, b.body) == (b"hello", b"world")
    assert len(endpoints.dials) == 1
    assert p.idle_count(KEY) == 1 and p.idle_count() == 1
    third = p.take_idle(KEY)  # an idle connection gives streams too
    assert third.connection is first.connection and p.idle_count() == 0


def test_a_full_connection_sends_the_next_request_to_a_new_one():
    clock, endpoints, p = pool()
    d = p.connect(KEY, 1)
    dialled(endpoints, settings={SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    get(d.result)
    assert p.take_idle(KEY) is None  # the upstream takes one stream at a time
    d2 = p.connect(KEY, 1)
    assert len(endpoints.dials) == 2
    dialled(endpoints)
    assert d2.result.connection is not d.result.connection
    assert p.spare(KEY) == ASSUMED_MAX_STREAMS - 1  # the new one's room


def test_connects_while_a_dial_is_under_way_wait_for_it():
    clock, endpoints, p = pool()
    waiting = [p.connect(KEY, 1) for _ in range(3)]
    assert len(endpoints.dials) == 1
    dialled(endpoints)
    streams = [d.result for d in waiting]
    assert len({s.connection for s in streams}) == 1
    assert len(set(streams)) == 3


def test_a_dial_is_shared_up_to_what_a_connection_is_assumed_to_take():
    clock, endpoints, p = pool()
    for _ in range(ASSUMED_MAX_STREAMS + 1):
        p.connect(KEY, 1)
    assert len(endpoints.dials) == 2


def test_a_shared_dial_stops_when_every_request_waiting_for_it_leaves():
    clock, endpoints, p = pool()
    a, b = p.connect(KEY, 1), p.connect(KEY, 1)
    for d in (a, b):
        d.addErrback(lambda f: f.trap(CancelledError))
    a.cancel()
    assert not endpoints.dials[0].cancelled
    b.cancel()
    assert endpoints.dials[0].cancelled
    p.connect(KEY, 1)
    assert len(endpoints.dials) == 2  # a new dial, not the cancelled one


def test_a_failed_dial_fails_every_request_waiting_for_it():
    clock, endpoints, p = pool()
    failures = []
    for _ in range(2):
        p.connect(KEY, 1).addErrback(failures.append)
    endpoints.dials[0].fail(ConnectionRefusedError())
    assert [f.check(ConnectionRefusedError) for f in failures] == [ConnectionRefusedError] * 2
    p.connect(KEY, 1)
    assert len(endpoints.dials) == 2


def test_after_goaway_new_requests_go_to_a_new_connection():
    clock, endpoints, p = pool()
    d = p.connect(KEY, 1)
    server = dialled(endpoints)
    sink = get(d.result)
    d.result.connection.dataReceived(goaway(1))
    assert p.take_idle(KEY) is None
    p.connect(KEY, 1)
    assert len(endpoints.dials) == 2
    server.read()
    server.respond(1, OK, b"hello")  # the stream it covers still finishes
    assert sink.done and server.transport.disconnecting


def test_idle_connections_close_after_the_idle_timeout():
    clock, endpoints, p = pool(idle_timeout=90)
    d = p.connect(KEY, 1)
    server = dialled(endpoints)
    busy = p.take_idle(KEY)
    get(busy)
    d.result.release()  # given back unused
    clock.advance(120)
    assert not server.transport.disconnecting  # a stream is under way
    server.read()
    server.respond(1, OK, b"hello")
    assert p.idle_count(KEY) == 1
    clock.advance(60)
    assert not server.transport.disconnecting
    clock.advance(60)
    assert server.transport.disconnecting
    assert any(isinstance(e, ConnectionTerminated) for e in server.read())
    assert p.idle_count() == 0 and p.take_idle(KEY) is None


def test_requests_with_a_body_do_not_take_a_connection_long_idle():
    clock, endpoints, p = pool()
    d = p.connect(KEY, 1)
    server = dialled(endpoints)
    d.result.release()
    clock.advance(FRESH_ENOUGH / 2)
    stream = p.take_idle(KEY, has_body=True)
    assert stream is not None
    stream.release()
    clock.advance(FRESH_ENOUGH)
    assert p.take_idle(KEY, has_body=True) is None
    assert server.transport.disconnecting


def test_warm_connections_given_back_keep_their_room():
    clock, endpoints, p = pool()
    d = p.connect(KEY, 1)
    dialled(endpoints)
    assert p.spare(KEY) == ASSUMED_MAX_STREAMS - 1
    p.put_idle(d.result)
    assert p.spare(KEY) == ASSUMED_MAX_STREAMS and p.idle_count(KEY) == 1


def test_close_idle_closes_idle_connections_and_the_busy_ones_after_their_streams():
    clock, endpoints, p = pool()
    idle = p.connect(KEY, 1)
    idle_server = dialled(endpoints)
    idle.result.release()
    other = (b"h2c", "api.default", 8080, "api.default")
    busy = p.connect(other, 1)
    busy_server = dialled(endpoints)
    get(busy.result)
    p.close_idle()
    assert idle_server.transport.disconnecting
    assert not busy_server.transport.disconnecting
    busy_server.read()
    busy_server.respond(1, OK, b"hello")
    assert busy_server.transport.disconnecting


# -- negotiated by ALPN -------------------------------------------------------------


@implementer(INegotiated)
class FakeTLS(StringTransport):
    """A TLS transport whose handshake the test completes."""

    def __init__(self, protocol):
        super().__init__()
        self.negotiatedProtocol = protocol
        self.wrappedProtocol = None


def test_https_dials_hand_over_the_protocol_alpn_chose():
    for chosen, kind in [(b"h2", H2Stream), (b"http/1.1", UpstreamConnection),
                         (None, UpstreamConnection)]:
        clock, endpoints, p = pool()
        key = (b"https", "10.0.0.7", 8443, "web.default")
        got = []
        p.connect(key, 1).addCallback(got.append)
        dial = endpoints.dials[0]
        switch = dial.factory.buildProtocol(None)
        assert isinstance(switch, ALPNSwitch)
        tls = FakeTLS(chosen)
        switch.makeConnection(tls)
        dial.deferred.callback(switch)
        assert got == []  # not before the handshake
        tls.wrappedProtocol = switch
        switch.handshakeCompleted()
        [result] = got
        assert isinstance(result, kind)
        assert tls.wrappedProtocol in (result, getattr(result, "connection", None))
        if kind is H2Stream:
            conn = result.connection
            assert conn.scheme == b"https" and p.take_idle(key).connection is conn
            assert tls.value().startswith(b"PRI * HTTP/2.0")


def test_an_https_dial_without_tls_under_it_speaks_http1():
    """An https key dialled with no upstream TLS configured: no handshake
    comes, and the connection is HTTP/1.1 at once."""
    clock, endpoints, p = pool()
    got = []
    p.connect((b"https", "10.0.0.7", 8443, "web.default"), 1).addCallback(got.append)
    up = endpoints.dials[0].succeed()
    [conn] = got
    assert isinstance(conn, UpstreamConnection) and conn.transport is up.transport
    whole = []

    class Whole(Sink):
        def response_whole(self, head, body):
            whole.append((head.code, body))

    conn.send(b"GET", GET, Whole())
    assert up.sent().startswith(b"GET /hello?x=1 HTTP/1.1\r\n")
    up.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert whole == [(200, b"ok")]  # what arrived went through the switch


def test_an_https_dial_whose_handshake_fails_fails():
    from OpenSSL import SSL
    from twisted.python.failure import Failure

    clock, endpoints, p = pool()
    failures = []
    p.connect((b"https", "10.0.0.7", 8443, "web.default"), 1).addErrback(failures.append)
    switch = endpoints.dials[0].factory.buildProtocol(None)
    switch.makeConnection(FakeTLS(None))
    endpoints.dials[0].deferred.callback(switch)
    switch.connectionLost(Failure(SSL.Error("certificate verify failed")))
    assert failures[0].check(SSL.Error)


def test_cancelling_an_https_dial_during_the_handshake_drops_the_connection():
    clock, endpoints, p = pool()
    d = p.connect((b"https", "10.0.0.7", 8443, "web.default"), 1)
    d.addErrback(lambda f: f.trap(CancelledError))
    switch = endpoints.dials[0].factory.buildProtocol(None)
    tls = FakeTLS(b"h2")
    switch.makeConnection(tls)
    endpoints.dials[0].deferred.callback(switch)
    d.cancel()
    assert tls.disconnecting or tls.disconnected


def test_upgrades_stay_on_http1():
    assert http1_key(KEY) == (b"http",) + KEY[1:]
    assert http1_key((b"https", "h", 1, "n")) == (b"https+http/1.1", "h", 1, "n")
    assert http1_key((b"http", "h", 1, "n")) == (b"http", "h", 1, "n")


# -- the scheme of a Service port ---------------------------------------------------


def test_an_h2c_service_port_gives_h2c_targets_unless_upstreams_are_tls():
    for ref_port, port_name in [(0, "http"), (8080, "")]:
        h = Harness()
        ref = route(port=ref_port, port_name=port_name).target
        load(h.store, services=[service(app_protocol=H2C_APP_PROTOCOL)])
        snapshot = h.store.current
        assert ServiceTargets(False).target(ref, "default", snapshot).key == KEY
        assert ServiceTargets(True).target(ref, "default", snapshot).scheme == b"https"
        load(h.store, services=[service(app_protocol="kubernetes.io/ws")])
        assert ServiceTargets(False).target(ref, "default", h.store.current).scheme == b"http"


def h2c_harness(settings=ProxySettings(), slices=None):
    h = Harness(settings=settings)
    load(h.store, routes=[route()], services=[service(app_protocol=H2C_APP_PROTOCOL)],
         slices=[endpoint_slice()] if slices is None else slices)
    return h


def test_a_request_to_an_h2c_service_goes_as_http2_and_comes_back_as_http1():
    h = h2c_harness()
    proto, client = h.get(b"/hello")
    assert h.dials[0].key == POD  # the pod keeps the Service's scheme
    server = dialled(h.endpoints)
    [headers] = server.requests().values()
    assert headers[:4] == [(b":method", b"GET"), (b":scheme", b"http"),
                           (b":authority", b"example.com"), (b":path", b"/hello")]
    server.respond(1, [(b":status", b"200"), (b"content-type", b"text/plain")], b"hello",
                   trailers=[(b"x-checksum", b"abc")])
    raw = client.value()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in raw
    assert raw.endswith(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")


def test_the_second_request_is_a_stream_on_the_same_connection():
    h = h2c_harness()
    _, first = h.get()
    server = dialled(h.endpoints)
    _, second = h.get()
    server.read()
    assert sorted(server.requests()) == [1, 3] and len(h.dials) == 1
    server.respond(3, OK, b"world")
    server.respond(1, OK, b"hello")
    assert first.value().endswith(b"hello") and second.value().endswith(b"world")


def test_an_upgrade_request_to_an_h2c_service_goes_over_http1():
    h = h2c_harness()
    h.get(extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    assert h.dials[0].key == (b"http", "127.0.0.1", 8080, "web.default")
    up = h.upstream()
    assert isinstance(up.protocol, UpstreamConnection)
    assert up.request_line() == b"GET / HTTP/1.1"


def test_a_request_refused_by_goaway_on_a_reused_connection_is_sent_again():
    h = h2c_harness()
    _, first = h.get()
    server = dialled(h.endpoints)
    server.respond(1, OK, b"hello")
    _, second = h.get()  # a stream on the same connection: its second
    server.read()
    server.h2.close_connection(last_stream_id=1)
    server.flush()
    assert len(h.dials) == 2  # replayed on a fresh connection
    fresh = dialled(h.endpoints, 1)
    [(sid, _)] = fresh.requests().items()
    fresh.respond(sid, OK, b"again")
    assert status_line(second) == b"HTTP/1.1 200 OK"
    assert second.value().endswith(b"again")


def test_a_client_that_leaves_resets_the_stream():
    h = h2c_harness()
    proto, client = h.get()
    server = dialled(h.endpoints)
    server.respond(1, [(b":status", b"200")], end=False)
    proto.connectionLost(None)
    assert [e.error_code for e in server.read() if isinstance(e, StreamReset)] == \
        [ErrorCodes.CANCEL]


def test_an_upstream_reset_mid_body_cuts_the_clients_response():
    h = h2c_harness()
    proto, client = h.get()
    server = dialled(h.endpoints)
    server.respond(1, [(b":status", b"200"), (b"content-length", b"10")], end=False)
    server.h2.send_data(1, b"hello")
    server.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
    server.flush()
    assert status_line(client) == b"HTTP/1.1 200 OK"
    assert client.value().endswith(b"hello")
    assert client.disconnecting  # cut: the client sees the body incomplete


def test_a_stream_refused_before_any_answer_is_a_502_when_the_connection_was_fresh():
    h = h2c_harness()
    _, client = h.get()
    server = dialled(h.endpoints)
    server.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
    server.flush()
    assert status_line(client) == b"HTTP/1.1 502 Bad Gateway"


def test_a_slow_client_pauses_the_stream():
    h = h2c_harness()
    proto, client = h.get()
    server = dialled(h.endpoints)
    server.respond(1, [(b":status", b"200")], end=False)
    server.h2.send_data(1, b"x" * 1000)
    server.flush()
    client.producer.pauseProducing()  # the client's transport is full
    stream = server.client.streams[1]
    assert stream._paused
    client.producer.resumeProducing()
    assert not stream._paused


# -- warm connections to starting pods ------------------------------------------------


def test_one_warm_h2c_connection_serves_every_request_held_for_a_starting_pod():
    h = Harness(settings=ProxySettings(direct_pod_routing=True))
    warmer = PodWarmer(h.clock, h.store, h.gate, h.pool, per_pod=3)
    pod = (b"h2c", "10.0.0.7", 3000, "web.default")
    load(h.store, routes=[route()], services=[service(app_protocol=H2C_APP_PROTOCOL)],
         slices=[starting()])
    clients = [h.get(b"/%d" % i)[1] for i in range(3)]
    assert [d.key for d in h.dials] == [pod]
    server = dialled(h.endpoints)
    h.clock.advance(warmer.interval)  # proven: but its room is enough for all
    h.clock.advance(warmer.interval)
    assert len(h.dials) == 1 and h.pool.spare(pod) == ASSUMED_MAX_STREAMS
    assert server.requests() == {}  # nothing sent while the pod starts
    load(h.store, routes=[route()], services=[service(app_protocol=H2C_APP_PROTOCOL)],
         slices=[attrs.evolve(endpoint_slice(ips=("10.0.0.7",), ports=(("http", 3000),)))])
    server.read()
    assert len(server.requests()) == 3 and len(h.dials) == 1
    for sid in server.requests():
        server.respond(sid, OK, b"hello")
    assert all(c.value().endswith(b"hello") for c in clients)


def test_h2_streams_tell_the_warmer_whether_their_connection_is_open():
    clock = Clock()
    conn = H2ClientConnection(clock)
    conn.makeConnection(StringTransport())
    stream = conn.new_stream()
    assert stream.uses == 0 and stream.state != CLOSED
    conn.connectionLost(None)
    assert stream.state == CLOSED
