"""
Issue #16, latency under bursts: what the proxy does when hundreds of
clients arrive or come back at once.

- The listeners ask for the kernel's accept-queue length (somaxconn), as
  Go's do, not Twisted's 50: a burst of new connections is not dropped
  and retried a second later.
"""

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from keda_proxy import app
from keda_proxy.server import listen_backlog

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
