"""Shared pytest setup: the suite runs against the source tree, on the
reactor production runs on (twistd's epoll reactor, switched to the lean
dispatch loop and eager dials as C{keda_proxy.tap} switches it)."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def production_reactor():
    from twisted.internet import reactor

    from keda_proxy.epolldispatch import lean_dispatch

    lean_dispatch(reactor)  # a no-op on any reactor but plain epoll
    yield type(reactor)
