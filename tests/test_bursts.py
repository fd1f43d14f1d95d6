"""
Issue #16, latency under bursts: what the proxy does when hundreds of
clients arrive or come back at once.

- The listeners ask for the kernel's accept-queue length (somaxconn), as
  Go's do, not Twisted's 50: a burst of new connections is not dropped
  and retried a second later.
- The upstream pool keeps the connections a burst brought back above its
  idle bound for EXCESS_GRACE, so that the next burst reuses them instead
  of dialling again; only what stays surplus is closed.
"""

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from keda_proxy import _app as app
from keda_proxy.downstream._http1 import listen_backlog
from keda_proxy.upstream._pool import EXCESS_GRACE, ConnectionPool
from tests.test_pool import KEY, Dialler, pooled

# -- the accept queue --------------------------------------------------------------


def test_the_backlog_is_the_kernels_somaxconn(tmp_path):
    path = tmp_path / "somaxconn"
    path.write_text("4096\n")
    assert listen_backlog(str(path)) == 4096
    path.write_text("1000000\n")
    assert listen_backlog(str(path)) == 65535  # the kernel keeps 16 bits


def test_without_a_readable_somaxconn_the_backlog_is_the_c_librarys(tmp_path):
    assert listen_backlog(str(tmp_path / "absent")) == socket.SOMAXCONN
    for text in ("", "many\n", "0\n", "-1\n"):
        (tmp_path / "bad").write_text(text)
        assert listen_backlog(str(tmp_path / "bad")) == socket.SOMAXCONN


@pytest_twisted.inlineCallbacks
def test_listeners_listen_with_that_backlog():
    listener = app.Listener(reactor, 0, Factory.forProtocol(Protocol), "proxy",
                            interface="127.0.0.1")
    listener.startService()
    try:
        assert listener.port.backlog == listen_backlog() > 50
    finally:
        yield listener.stopService()


# -- the pool above its idle bound --------------------------------------------------------


def test_a_burst_above_the_idle_bound_reuses_its_connections_instead_of_dialling():
    clock = Clock()
    dialler = Dialler(clock)
    pool = ConnectionPool(clock, dialler.endpoint_for, max_idle_per_host=2)
    first = pooled(pool, KEY, 5)  # five requests at once, all answered in one turn
    assert pool.idle_count(KEY) == 5
    assert not any(c.transport.disconnecting for c in first)
    clock.advance(EXCESS_GRACE / 2)
    again = pooled(pool, KEY, 5)  # the next burst
    assert set(again) == set(first) and len(dialler.dials) == 5  # no dial
    clock.advance(EXCESS_GRACE / 2)  # the first look: all were busy since
    assert pool.idle_count(KEY) == 5
    clock.advance(EXCESS_GRACE / 2)  # surplus for the whole grace: closed
    assert pool.idle_count(KEY) == 2
    assert sum(c.transport.disconnecting for c in first) == 3
    assert {c for c in first if not c.transport.disconnecting} == set(again[-2:])  # newest


def test_a_surplus_connection_lost_meanwhile_is_simply_gone():
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for, max_idle_per_host=2)
    conns = pooled(pool, KEY, 4)
    conns[0].connectionLost()  # the upstream closed it while idle
    conns[1].connectionLost()
    clock.advance(EXCESS_GRACE)
    assert pool.idle_count(KEY) == 2
    assert not conns[2].transport.disconnecting and not conns[3].transport.disconnecting
    assert len(clock.getDelayedCalls()) == 1  # the sweeper alone


def test_no_grace_closes_the_surplus_at_once():
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for, max_idle_per_host=2,
                          excess_grace=0)
    conns = pooled(pool, KEY, 3)
    assert pool.idle_count(KEY) == 2 and conns[0].transport.disconnecting


def test_closing_the_idle_connections_stops_the_trim():
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for, max_idle_per_host=2)
    conns = pooled(pool, KEY, 3)
    pool.close_idle()
    assert all(c.transport.disconnecting for c in conns)
    assert clock.getDelayedCalls() == []
