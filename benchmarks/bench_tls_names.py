"""
Memory per server name of the upstream TLS creator cache.

Run: ``.venv/bin/python benchmarks/bench_tls_names.py [--names 200]``

One fake pod on 127.0.0.1 presents a ``*.bench.example`` certificate from
a private CA (trustme), trusted through a CA folder, as
``KEDA_HTTP_TLS_CA_DIRS`` would.  An L{UpstreamTLS} built from the
configuration, with the system CAs, then dials the pod once for each of
C{--names} different names, a full verifying handshake each, keeping every
creator (and its SSL context) in its cache.  The RSS growth over those
dials, divided by the number of names, is what one cached name costs;
C{CREATOR_CACHE_SIZE} is chosen from it (see keda_proxy/upstream/_tls.py).
Twenty names are dialled first, so that one-time allocations (the
handshake code, the first context's ciphers) are not counted.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme
from OpenSSL import SSL
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from keda_proxy.ops._config import Config
from keda_proxy.upstream._tls import UpstreamTLS

WARM_UP = 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@implementer(IOpenSSLServerConnectionCreator)
class Pod:
    def __init__(self, cert):
        self.ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        cert.configure_cert(self.ctx)

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.ctx, None)


@implementer(IHandshakeListener)
class Probe(Protocol):
    """Hangs up once the handshake is done; C{done} fails if it never is."""

    shaken = False

    def __init__(self):
        self.done = defer.Deferred()

    def handshakeCompleted(self):
        self.shaken = True
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.shaken:
            self.done.callback(None)
        else:
            self.done.errback(reason)


@defer.inlineCallbacks
def dial(reactor, upstream, name: str, port: int):
    creator = upstream.creatorForNetloc(name, port)
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    probe = yield connectProtocol(endpoint, Probe())
    yield probe.done


@defer.inlineCallbacks
def main(reactor, names: int):
    ca = trustme.CA()
    folder = Path(tempfile.mkdtemp())
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    port = reactor.listenSSL(0, Factory.forProtocol(Protocol),
                             Pod(ca.issue_cert("*.bench.example")), interface="127.0.0.1")
    number = port.getHost().port
    config = Config(proxy_port=0, admin_port=0, proxy_tls_enabled=True, tls_cert_path="",
                    tls_key_path="", tls_ca_dirs=(str(folder),))
    upstream = UpstreamTLS.from_config(config, cache_size=names + WARM_UP)
    for i in range(WARM_UP):
        yield dial(reactor, upstream, f"warm{i}.bench.example", number)
    gc.collect()
    before = rss()
    for i in range(names):
        yield dial(reactor, upstream, f"svc{i}.bench.example", number)
    gc.collect()
    grown = rss() - before
    yield port.stopListening()
    print(f"{names} names, one verifying handshake each: RSS +{grown / 2**20:.1f} MiB, "
          f"{grown / names / 1024:.1f} KiB a name")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--names", type=int, default=200)
    task.react(main, [parser.parse_args().names])
