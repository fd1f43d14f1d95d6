"""Tests for keda_proxy.epolldispatch: the opt-in reactor (``twistd -r
keda-epoll``), its direct dispatch loop and eager dials, each on a private
reactor; and the proxy's pod dials on the stock epoll reactor."""

import os
import socket
import sys

import pytest
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import globalLogPublisher
from twisted.python import log

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll")


def _private(reactor_type):
    r = reactor_type()
    yield r
    r._poller.close()
    os.close(r.waker.i)
    os.close(r.waker.o)


@pytest.fixture
def reactor():
    """A private L{LeanEPollReactor}, never run: tests turn it by hand."""
    from keda_proxy.epolldispatch import LeanEPollReactor

    yield from _private(LeanEPollReactor)


@pytest.fixture
def stock_reactor():
    """A private stock L{EPollReactor}."""
    from twisted.internet.epollreactor import EPollReactor

    yield from _private(EPollReactor)


@pytest.fixture
def listener():
    """A socket listening on 127.0.0.1 that nobody accepts from: the
    kernel completes the handshakes by itself."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.settimeout(2)
        yield s


class Reader:
    """A minimal IReadDescriptor over one end of a socket pair."""
    def __init__(self, sock, why=None):
        self.sock, self.why, self.got, self.lost = sock, why, [], []

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        raise AssertionError("the legacy log context was consulted")

    def doRead(self):
        self.got.append(self.sock.recv(100))
        return self.why

    def connectionLost(self, reason):
        self.lost.append(reason)
        raise RuntimeError("a buggy connectionLost")


def test_the_reactor_is_the_stock_epoll_one_with_its_own_loop(reactor):
    from twisted.internet.epollreactor import EPollReactor

    from keda_proxy.epolldispatch import LeanEPollReactor

    assert isinstance(reactor, EPollReactor)
    assert reactor.doIteration.__func__ is LeanEPollReactor.doPoll


def test_a_ready_socket_is_read_without_the_log_context(reactor, monkeypatch):
    monkeypatch.setattr(log, "callWithLogger", None)  # would fail if called
    a, b = socket.socketpair()
    with a, b:
        reader = Reader(a)
        reactor.addReader(reader)
        reactor.doIteration(0)
        assert reader.got == []  # nothing ready yet
        b.sendall(b"hello")
        reactor.doIteration(0)
        assert reader.got == [b"hello"]
        assert reader in reactor.getReaders()


def test_an_error_escaping_dispatch_is_logged_and_the_loop_goes_on(reactor):
    events = []
    globalLogPublisher.addObserver(events.append)
    a, b, c, d = *socket.socketpair(), *socket.socketpair()
    try:
        # the first hangs up during its read; its connectionLost then raises
        bad, good = Reader(a, why=CONNECTION_DONE), Reader(c)
        reactor.addReader(bad)
        reactor.addReader(good)
        b.sendall(b"x")
        d.sendall(b"y")
        reactor.doIteration(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
        for s in (a, b, c, d):
            s.close()
    assert bad.got == [b"x"] and len(bad.lost) == 1
    assert good.got == [b"y"]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


def spin(reactor, done, turns=300):
    """Run the private reactor's turns until C{done()} (real sockets)."""
    for _ in range(turns):
        reactor.runUntilCurrent()
        if done():
            return
        reactor.doIteration(0.01)
    raise AssertionError("the reactor never got there")


def test_tcp_reads_take_the_inlined_path_with_the_same_outcomes(reactor, monkeypatch):
    from twisted.internet.error import ConnectionDone
    from twisted.internet.protocol import Factory, Protocol

    dispatched = []
    stock = reactor._doReadOrWrite
    monkeypatch.setattr(reactor, "_doReadOrWrite",
                        lambda s, fd, ev: (dispatched.append(type(s).__name__), stock(s, fd, ev)))
    received, lost = [], []

    class Recorder(Protocol):
        def dataReceived(self, data):
            received.append(data)
            if data == b"boom":
                raise ValueError("a buggy protocol")

        def connectionLost(self, reason):
            lost.append(reason)

    events = []
    globalLogPublisher.addObserver(events.append)
    port = reactor.listenTCP(0, Factory.forProtocol(Recorder), interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    try:
        with socket.create_connection(address) as c:
            c.sendall(b"hello")
            spin(reactor, lambda: received == [b"hello"])
        spin(reactor, lambda: len(lost) == 1)  # the client hung up
        assert lost[0].check(ConnectionDone)
        with socket.create_connection(address) as c:
            c.sendall(b"boom")
            spin(reactor, lambda: len(lost) == 2)
            assert lost[1].check(ValueError)
            c.settimeout(5)
            assert c.recv(10) == b""  # and the connection was closed
    finally:
        globalLogPublisher.removeObserver(events.append)
        port.stopListening()
        reactor.runUntilCurrent()
    assert [e["log_failure"].check(ValueError) for e in events if "log_failure" in e] \
        == [ValueError]
    # only the listening port's accepts went through the general step
    assert set(dispatched) == {"Port"}


class Dialled(Protocol):
    def __init__(self, log):
        self.log = log

    def connectionMade(self):
        self.log.append(("made", self))

    def dataReceived(self, data):
        self.log.append(("data", data))


class DialFactory(ClientFactory):
    noisy = False

    def __init__(self):
        self.log = []

    def buildProtocol(self, addr):
        return Dialled(self.log)

    def clientConnectionFailed(self, connector, reason):
        self.log.append(("failed", reason))


def test_an_ipv4_dial_is_under_way_when_connectTCP_returns(reactor, listener):
    factory = DialFactory()
    reactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    assert factory.log == []  # nothing reported from inside connectTCP
    # no reactor turn yet, and the handshake is done: the kernel has it
    accepted, _ = listener.accept()
    with accepted:
        spin(reactor, lambda: factory.log[:1] and factory.log[0][0] == "made")
        accepted.sendall(b"hi")
        spin(reactor, lambda: ("data", b"hi") in factory.log)
        transport = factory.log[0][1].transport
        transport.loseConnection()
        spin(reactor, lambda: transport.disconnected)
        accepted.settimeout(2)
        assert accepted.recv(10) == b""
    assert reactor.getDelayedCalls() == []  # the connect timeout went with it


@pytest.mark.parametrize("dial", ["connectTCP", "connect_at_once"])
def test_a_refused_dial_is_reported_a_turn_later_as_refused(reactor, dial):
    from twisted.internet.error import ConnectionRefusedError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    factory = DialFactory()
    getattr(reactor, dial)("127.0.0.1", port, factory, timeout=5)
    assert factory.log == []
    spin(reactor, lambda: factory.log)
    [(what, reason)] = factory.log
    assert what == "failed" and reason.check(ConnectionRefusedError)


def test_an_ipv6_literal_is_dialled_the_stock_way(reactor):
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        listener.listen(8)
        factory = DialFactory()
        connector = reactor.connectTCP("::1", listener.getsockname()[1], factory, timeout=5)
        spin(reactor, lambda: factory.log)
        assert factory.log[0][0] == "made"
        connector.disconnect()
        reactor.runUntilCurrent()


def test_connect_at_once_connects_a_loopback_dial_before_it_returns(reactor, listener):
    """The handshake to a listener on this host is over when C{connect}
    returns: the protocol is connected in the same call, registered for
    reading only, with no connect timeout left behind."""

    factory = DialFactory()
    connector = reactor.connect_at_once("127.0.0.1", listener.getsockname()[1], factory,
                                        timeout=5)
    [(what, proto)] = factory.log
    assert what == "made" and proto.transport.connected
    assert connector.state == "connected"
    assert reactor.getDelayedCalls() == []  # the connect timeout is cancelled
    transport = proto.transport
    assert transport in reactor.getReaders() and reactor.getWriters() == []
    accepted, _ = listener.accept()
    with accepted:
        transport.write(b"sent")
        got = []
        accepted.setblocking(False)

        def arrived():
            try:
                got.append(accepted.recv(100))
            except BlockingIOError:
                pass
            return got

        spin(reactor, arrived)
        assert got == [b"sent"]
        accepted.sendall(b"hi")
        spin(reactor, lambda: ("data", b"hi") in factory.log)
        transport.loseConnection()
        spin(reactor, lambda: transport.disconnected)


def test_connect_at_once_registers_an_established_dial_with_epoll_once(reactor, listener):
    """Finished in the call, a dial is registered for reading and nothing
    else: no write watch set up and taken down again."""

    class Counting:
        def __init__(self, poller):
            self._poller, self.calls = poller, []

        def __getattr__(self, name):
            attr = getattr(self._poller, name)
            if name in ("register", "modify", "unregister"):
                def counted(*args):
                    self.calls.append(name)
                    return attr(*args)
                return counted
            return attr

    counting = reactor._poller = Counting(reactor._poller)
    factory = DialFactory()
    reactor.connect_at_once("127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    [(what, proto)] = factory.log
    assert what == "made"
    assert counting.calls == ["register"]
    proto.transport.loseConnection()
    spin(reactor, lambda: proto.transport.disconnected)


def test_connect_at_once_leaves_a_handshake_under_way_to_the_reactor(
        reactor, monkeypatch, listener):
    """A connect not yet established (a pod on another host) is finished
    by the reactor, a turn later, as C{connectTCP} finishes it."""
    from keda_proxy import epolldispatch

    monkeypatch.setattr(epolldispatch, "_established", lambda skt: False)
    factory = DialFactory()
    connector = reactor.connect_at_once("127.0.0.1", listener.getsockname()[1], factory,
                                        timeout=5)
    assert factory.log == []
    assert connector.transport in reactor.getWriters()
    [timer] = reactor.getDelayedCalls()  # its connect timeout, as connectTCP's
    assert timer.getTime() - reactor.seconds() == pytest.approx(5, abs=1)
    spin(reactor, lambda: factory.log)
    assert factory.log[0][0] == "made"
    assert reactor.getDelayedCalls() == []
    connector.disconnect()
    reactor.runUntilCurrent()


def test_connect_at_once_contains_an_error_from_connectionMade(reactor, listener):
    """A protocol that fails as it connects loses its connection, logged,
    as the reactor handles it on a later turn; the caller's call returns."""

    class Failing(Dialled):
        def connectionMade(self):
            raise ValueError("broken protocol")

        def connectionLost(self, reason):
            self.log.append(("lost", reason))

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        factory = DialFactory()
        factory.buildProtocol = lambda addr: Failing(factory.log)
        connector = reactor.connect_at_once("127.0.0.1", listener.getsockname()[1],
                                            factory, timeout=5)
        [(what, reason)] = factory.log
        assert what == "lost" and reason.check(ValueError)
        assert connector.transport.disconnected
        assert connector.transport not in reactor.getReaders()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["log_failure"].check(ValueError) for e in events if "log_failure" in e] \
        == [ValueError]


def test_a_direct_endpoint_fires_at_once_on_this_reactor(reactor, listener):
    """The pool's pod dials take the at-once path: the connection is
    there when C{connect} returns."""
    from keda_proxy.upstream._dial import DirectEndpoint

    factory = DialFactory()
    d = DirectEndpoint(reactor, "127.0.0.1", listener.getsockname()[1], 5).connect(factory)
    got = []
    d.addCallback(got.append)
    assert len(got) == 1 and got[0].transport.connected
    got[0].transport.loseConnection()
    spin(reactor, lambda: got[0].transport.disconnected)


def test_a_direct_endpoint_on_the_stock_reactor_dials_with_connectTCP(
        stock_reactor, listener):
    """Without C{connect_at_once} (any reactor but keda-epoll) a pod dial
    is Twisted's C{connectTCP}: connected a turn or two later, the same
    connection otherwise."""
    from keda_proxy.upstream._dial import DirectEndpoint

    assert not hasattr(stock_reactor, "connect_at_once")
    factory = DialFactory()
    d = DirectEndpoint(stock_reactor, "127.0.0.1", listener.getsockname()[1], 5) \
        .connect(factory)
    got = []
    d.addCallback(got.append)
    assert got == []  # not inside the call
    spin(stock_reactor, lambda: got)
    assert got[0].transport.connected
    got[0].transport.loseConnection()
    spin(stock_reactor, lambda: got[0].transport.disconnected)


def test_install_makes_it_the_global_reactor():
    """C{twistd -r keda-epoll} calls C{install()}: in a fresh process, it
    installs a L{LeanEPollReactor} (a subclass of the stock epoll one) as
    C{twisted.internet.reactor}, and importing the module installs nothing."""
    import subprocess

    code = (
        "import sys\n"
        "from keda_proxy import epolldispatch\n"
        "assert 'twisted.internet.reactor' not in sys.modules\n"
        "r = epolldispatch.install()\n"
        "from twisted.internet import reactor\n"
        "assert reactor is r and type(r) is epolldispatch.LeanEPollReactor, type(r)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


def test_the_reactor_plugin_names_this_module():
    from twisted.application.reactors import getReactorTypes

    [plugin] = [r for r in getReactorTypes() if r.shortName == "keda-epoll"]
    assert plugin.moduleName == "keda_proxy.epolldispatch"


def test_the_suite_runs_on_the_reactor_asked_for(test_reactor):
    """KEDA_TEST_REACTOR picks the reactor the whole suite runs on: the
    stock epoll one by default (``twistd keda-interceptor``), or keda-epoll."""
    from twisted.internet import reactor
    from twisted.internet.epollreactor import EPollReactor

    from keda_proxy.epolldispatch import LeanEPollReactor

    name, installed = test_reactor
    assert type(reactor) is installed
    assert installed is {"default": EPollReactor, "keda-epoll": LeanEPollReactor}[name]
