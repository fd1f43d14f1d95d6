"""
Real-socket helpers for integration tests: a controllable backend, an
HTTP client that does not share connections between tests, and bounded
waiting on a condition (never a fixed sleep).
"""

from __future__ import annotations

import json
import socket
import time

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@inlineCallbacks
def wait_for(predicate, timeout=10.0, step=0.01, what="condition"):
    """Poll C{predicate} on the reactor until true; fail after C{timeout}."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield deferLater(reactor, step, lambda: None)


def eventually(check, timeout=15.0, what="condition", retry_on=(OSError,), step=0.05,
               describe=None):
    """Call C{check} until it returns something true, and return that; a
    blocking poll, for tests that drive a separate process.  Exceptions of
    C{retry_on} count as "not yet"; after C{timeout} the assertion names
    C{what}, the last such error, and C{describe()} when given (a process's
    log, say).  C{check} may raise AssertionError to stop at once."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except retry_on as e:
            last = e
        time.sleep(step)
    extra = "" if describe is None else ":\n" + describe()
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r}){extra}")


class Backend(resource.Resource):
    """Echoes what it got at ``/``; ``/held`` is answered only when the test
    says so, which lets a test look at the proxy mid-request."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.held: list = []
        self.seen: list = []
        self.connections = 0

    def render(self, request):
        self.seen.append(request)
        if request.path.startswith(b"/held"):
            self.held.append(request)
            return server.NOT_DONE_YET
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-backend", b"yes")
        return json.dumps({
            "path": request.uri.decode(),
            "method": request.method.decode(),
            "host": (request.getHeader(b"host") or b"").decode(),
            "xff": (request.getHeader(b"x-forwarded-for") or b"").decode(),
            "xfh": (request.getHeader(b"x-forwarded-host") or b"").decode(),
            "xfp": (request.getHeader(b"x-forwarded-proto") or b"").decode(),
            "body": body.decode("latin-1"),
        }).encode()


class CountingSite(server.Site):
    def __init__(self, backend: Backend):
        super().__init__(backend)
        self.backend = backend

    def buildProtocol(self, addr):
        self.backend.connections += 1
        return super().buildProtocol(addr)

    def log(self, request):
        pass


def start_backend():
    """A L{Backend} listening on an ephemeral loopback port."""
    backend = Backend()
    return backend, reactor.listenTCP(0, CountingSite(backend), interface="127.0.0.1")


class Client:
    """treq over a private pool, closed at the end of each test."""

    def __init__(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    def close(self):
        return self.pool.closeCachedConnections()


class RawClient(Protocol):
    """A bare TCP client, for requests no HTTP library would send and for
    hanging up at a chosen moment."""

    def __init__(self):
        self.received = b""
        self.lost = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)

    @classmethod
    def connect(cls, port, host="127.0.0.1"):
        ep = TCP4ClientEndpoint(reactor, host, port)
        return connectProtocol(ep, cls())


def discovered_with(code: str, pythonpath) -> list:
    """Run C{code} in a fresh Python with C{pythonpath} (plugin discovery
    reads sys.path as it starts) from the repository's root; the JSON it
    prints last."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])
