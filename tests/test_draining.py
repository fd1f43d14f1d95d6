"""
Draining as Go's server drains: once the interceptor is shutting down,
every HTTP/1.x response says ``Connection: close`` and its connection
closes after it, so clients reconnect to another replica.
"""

import pytest

from tests.proxyfakes import OK_5, Harness, response_headers, status_line
from tests.test_proxy import warm


@pytest.mark.parametrize("request_line, extra", [
    (b"GET / HTTP/1.1", b""),
    (b"GET / HTTP/1.0", b"Connection: keep-alive\r\n"),
])
def test_while_draining_each_response_closes_its_connection(request_line, extra):
    h = Harness()
    warm(h)
    proto, t = h.connect()
    proto.dataReceived(request_line + b"\r\nHost: example.com\r\n" + extra + b"\r\n")
    h.site.draining = True  # the drain began while the request was in flight
    h.upstream().respond(OK_5)
    assert status_line(t).endswith(b"200 OK")
    assert response_headers(t)[b"connection"] == [b"close"]
    assert t.disconnecting


def test_before_draining_connections_are_kept():
    h = Harness()
    warm(h)
    _, t = h.get()
    h.upstream().respond(OK_5)
    assert b"connection" not in response_headers(t)
    assert not t.disconnecting


def test_own_responses_close_too_while_draining():
    h = Harness()
    warm(h)
    h.site.draining = True
    _, t = h.get(host=b"nowhere.example")
    assert status_line(t) == b"HTTP/1.1 404 Not Found"
    assert response_headers(t)[b"connection"] == [b"close"]
    assert t.disconnecting
