"""
Step 6: forward the request over a pooled upstream connection and stream
the response back; on a 101, open a byte tunnel.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IBodyConsumer, IRequestStep, IResponseSink
from keda_proxy.steps._responses import write_error
from keda_proxy.steps._route import absolute_form
from keda_proxy.steps._targets import switch_pod
from keda_proxy.steps._tunnel import Tunnel
from keda_proxy.upstream._dial import CONNECT_ERRORS
from keda_proxy.upstream._http1client import UpstreamProtocolError
from keda_proxy.upstream._schemes import HTTP, http1_key
from keda_proxy.wire._headers import COLD_START_KEY, request_head, upgrade_requested

log = Logger()

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
_TRUE = [b"true"]
_FALSE = [b"false"]


def upstream_request_head(context) -> bytes:
    """The upstream request head: the same for every attempt and every
    target, so it is built once, and a held request builds it while it
    waits."""
    head = context.request_head
    if head is not None:
        return head
    downstream = context.downstream
    target = downstream.target
    if target[:1] == b"/" or target == b"*":
        authority = None
    else:  # absolute form: its authority is the Host
        authority, target = absolute_form(target)
    trace = context.trace
    headers = downstream.headers
    head = context.request_head = request_head(
        downstream.method, target, headers, downstream.client_address, downstream.scheme,
        downstream.body.length, authority,
        None if trace is None else trace.upstream_traceparent())
    if b"Connection" in headers:  # rare: skip the lookup
        context.upgrade = upgrade_requested(headers)
    return head


@implementer(IRequestStep)
class Forward:
    """Send the request to C{context.target} and stream the response back.

    A stale pod (its dial fails: nothing was sent) is retried on another
    ready pod, then on the Service; a pooled connection the upstream had
    closed is retried once, fresh, when the request may be replayed.
    Timeouts: the response head (504), the request deadline (504, or a
    cut once the response has begun).  Failures are 502.
    """

    def __init__(self, pool, selector, settings, tracer, next=None):
        self.pool = pool
        self.selector = selector
        self.settings = settings
        self.tracer = tracer

    def handle(self, context) -> None:
        if context.over:
            return
        cold_start = context.cold_start
        if cold_start is not None and self.settings.enable_cold_start_header:
            context.downstream.response_headers[COLD_START_KEY] = \
                _TRUE if cold_start else _FALSE
        attempt = _Attempt(self, context)
        context.on_deadline = attempt.deadline
        context.on_gone(attempt.client_left)
        attempt.send(context.target)


@implementer(IResponseSink)
class _Attempt:
    """One request's forwarding: the connection it is on, its body's
    writer, and the upstream's answer coming back."""

    _conn = None
    _connecting = None
    _body_writer = None
    _retried = False
    _streaming = False
    _producing = False
    _head = None

    def __init__(self, step: Forward, context):
        self.step = step
        self.context = context
        self.downstream = context.downstream
        self.target = None

    # -- sending --------------------------------------------------------------

    def send(self, target, fresh: bool = False) -> None:
        """Get a connection for C{target} and send the request on it."""
        self.target = target
        context = self.context
        trace = context.trace
        if trace is not None:
            if trace.client_start is None:
                trace.client_start = self.step.tracer.clock_ns()
            trace.peer = (target.host, target.port)
        pool = self.step.pool
        key = target.key
        if target.scheme != HTTP and b"Connection" in self.downstream.headers:
            # an upgrade (a WebSocket) stays on HTTP/1.1
            if context.request_head is None:
                upstream_request_head(context)  # it tells whether one is asked for
            if context.upgrade is not None:
                key = http1_key(key)
        if not fresh:
            conn = pool.take_idle(key, self.downstream.body.length != 0)
            if conn is not None:
                self._connected(conn, target)
                return
        if target.service is not None:
            budget = 0.0  # a pod: one attempt, then the next pod
        elif context.deadline_at is not None:
            budget = max(0.0, context.deadline_at - context.clock.seconds())
        else:
            budget = self.step.settings.dial_budget
        d = self._connecting = pool.connect(key, budget)
        d.addCallbacks(self._connected, self._connect_failed,
                       callbackArgs=(target,), errbackArgs=(target,))

    def _connect_failed(self, f, target) -> None:
        self._connecting = None
        context = self.context
        if f.check(CancelledError) or context.over:
            return
        if target.service is not None:
            # a stale pod: nothing was sent, so try another, then the Service
            selector = self.step.selector
            tried = (target.host, target.port)
            others = tuple(c for c in target.alternatives if c != tried)
            route = context.route.key
            if others:
                ip, port = selector.select(others, context.facts)
                rest = tuple(c for c in others if c != (ip, port))
                log.info("{route}: pod {pod} refused; trying another",
                         route=route, pod=target.describe())
                switch_pod(context, selector, (ip, port))
                self.send(attrs.evolve(target, host=ip, port=port, alternatives=rest))
            else:
                log.info("{route}: no ready pod answered; using the Service address",
                         route=route)
                switch_pod(context, selector, None)
                self.send(target.service)
            return
        self._fail(f, target)

    def _connected(self, conn, target) -> None:
        self._connecting = None
        context = self.context
        if context.over:
            conn.owner and conn.owner.connection_reusable(conn)
            return
        self._conn = conn
        downstream = self.downstream
        body = downstream.body
        length = body.length
        head = context.request_head or upstream_request_head(context)
        conn.send(downstream.method, head, self, chunked_body=length is None,
                  has_body=length != 0, upgrade=context.upgrade)
        if length != 0:
            self._body_writer = _BodyWriter(conn, body)
            body.attach(self._body_writer)
        timeout = context.route.timeouts.response_header
        if timeout is None:
            timeout = self.step.settings.response_header_timeout
        if timeout > 0:
            conn.arm_timer(timeout, self._response_header_timeout)

    def _response_header_timeout(self) -> None:
        self.context.timed_out = True
        if self._conn is not None:
            self._conn.abort_with(_Timeout())

    # -- IResponseSink ---------------------------------------------------------

    def response_head(self, head) -> None:
        if self._conn is not None:
            self._conn.disarm_timer()
        if self.context.over:
            self._abort_upstream()
            return
        self._head = head
        self._streaming = True
        self.downstream.respond(head)

    def response_data(self, data: bytes) -> None:
        if self.context.over:
            return
        conn = self._conn
        if not self._producing and conn is not None and conn.more_expected:
            # a body that spans reads: let a slow client slow the upstream
            self._producing = True
            self.downstream.registerProducer(conn.transport, True)
        self.downstream.write(data)

    def response_whole(self, head, body: bytes) -> None:
        if self._body_writer is not None:
            self._release_body()
        self._conn = None
        if self.context.over:
            return
        self._head = head
        self.downstream.respond_whole(head, body)

    def response_done(self, trailers=None) -> None:
        if self._body_writer is not None:
            self._release_body()
        self._conn = None
        if self.context.over:
            return
        if self._producing:
            self._producing = False
            self.downstream.unregisterProducer()
        self.downstream.finish(trailers)

    def response_failed(self, reason, response_started: bool) -> None:
        conn, self._conn = self._conn, None
        self._release_body()
        context = self.context
        if context.over:
            return
        if response_started:
            log.info("{route}: upstream body broke off: {error}",
                     route=context.route.key, error=reason.getErrorMessage())
            if self._producing:
                self._producing = False
                self.downstream.unregisterProducer()
            self.downstream.abort()
            return
        if not context.timed_out and conn is not None and conn.uses > 1 and not conn.answered \
                and not self._retried and self._replayable() \
                and reason.check(ConnectionDone, ConnectionLost):
            # a pooled connection the upstream had closed before answering:
            # once more, fresh
            self._retried = True
            self.send(self.target, fresh=True)
            return
        self._fail(reason, self.target)

    def response_informational(self, head) -> None:
        """Pass a 1xx (103 Early Hints) on ahead of the response, as Go's
        ReverseProxy does."""
        if self.context.over:
            self._abort_upstream()
            return
        self.downstream.informational(head)

    def response_upgraded(self, conn, rest: bytes) -> None:
        if self.context.over:
            conn.abort()
            return
        self._conn = None
        try:
            Tunnel.open(self.context, self._head, conn, rest)
        except NotImplementedError:  # a protocol without upgrades
            conn.abort()
            write_error(self.downstream, 502)

    # -- endings ---------------------------------------------------------------

    def _replayable(self) -> bool:
        """Whether the request may be sent again, as Go decides: no body,
        and an idempotent method or an idempotency key."""
        downstream = self.downstream
        if downstream.body.length != 0:
            return False
        if downstream.method in _IDEMPOTENT:
            return True
        headers = downstream.headers
        return b"Idempotency-Key" in headers or b"X-Idempotency-Key" in headers

    def _fail(self, f, target) -> None:
        route = self.context.route.key
        if self.context.timed_out or f.check(_Timeout):
            log.info("{route}: upstream {uri} timed out", route=route, uri=target.describe())
            write_error(self.downstream, 504)
            return
        if f.check(*CONNECT_ERRORS, ConnectionLost, ConnectionDone, UpstreamProtocolError):
            log.info("{route}: upstream {uri} failed: {error}", route=route,
                     uri=target.describe(), error=f.getErrorMessage())
        else:
            log.failure("{route}: upstream {uri} failed", f, route=route, uri=target.describe())
        write_error(self.downstream, 502)

    def _release_body(self) -> None:
        writer, self._body_writer = self._body_writer, None
        if writer is not None:
            writer.close()

    def _abort_upstream(self) -> None:
        conn, self._conn = self._conn, None
        self._release_body()
        if conn is not None:
            conn.abort()

    def deadline(self) -> None:
        """The request deadline passed while forwarding."""
        if self._streaming:
            # Headers are out: the only honest signal left is a cut.
            self._abort_upstream()
            self.downstream.abort()
        elif self._connecting is not None:
            self._connecting.cancel()
            write_error(self.downstream, 504)
        elif self._conn is not None:
            self._conn.abort_with(_Timeout())
        else:
            write_error(self.downstream, 504)

    def client_left(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        self._abort_upstream()


class _Timeout(Exception):
    """A response-header or request deadline passed (504)."""


@implementer(IBodyConsumer)
class _BodyWriter:
    """Streams a request body onto an upstream connection, pausing the
    client while the upstream's send buffer is full."""

    def __init__(self, conn, body):
        self.conn = conn
        self.body = body
        self.registered = False
        if conn.transport is not None:
            conn.transport.registerProducer(body, True)
            self.registered = True

    def write_body(self, data: bytes) -> None:
        self.conn.write_body(data)

    def end_body(self, trailers=None) -> None:
        self.conn.end_body(trailers)
        self.close()

    def close(self) -> None:
        self.body.detach()
        if self.registered:
            self.registered = False
            if self.conn.transport is not None:
                self.conn.transport.unregisterProducer()
            self.body.resumeProducing()
