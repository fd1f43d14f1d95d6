"""
Certificates rotated on disk reach new handshakes of the TLS listener
without a restart; a broken new file keeps the previous certificate served
and is logged once.

Certificates are made at test time (trustme).  The reload logic runs on a
L{Clock} and is checked with in-memory handshakes (pyOpenSSL memory BIOs:
what a new connection of the listener is served); the listener itself is
checked over real loopback connections, waiting on conditions with bounded
waits.
"""

from __future__ import annotations

import gc
import os
import shutil

import pytest
import pytest_twisted
import trustme
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from zope.interface import implementer

from keda_proxy import _tls as tls
from keda_proxy._app import build_service
from keda_proxy.downstream import _tls as listener_tls
from keda_proxy.downstream._tls import RELOAD_INTERVAL, CertificateWatcher, ServerTLS
from tests.netsupport import wait_for
from tests.test_tls import ProbeClient, capture, config, handshake

# ---------------------------------------------------------------------------
# Helpers


def put(path, data: bytes) -> None:
    """Replace the file at C{path} at once (a new file renamed over it),
    as cert-manager's and kubelet's writers do."""
    tmp = f"{path}.tmp"  # no .crt/.key/.pem suffix: never taken for a pair
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def chain_pem(cert) -> bytes:
    return b"".join(blob.bytes() for blob in cert.cert_chain_pems)


def install(folder, stem, cert) -> tuple:
    """Write C{cert} and its key as ``stem.crt`` and ``stem.key``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = str(folder / f"{stem}.crt"), str(folder / f"{stem}.key")
    put(key_path, cert.private_key_pem.bytes())
    put(cert_path, chain_pem(cert))
    return cert_path, key_path


def k8s_volume(root, files: dict) -> None:
    """Publish C{files} (name -> bytes) in C{root} as kubelet updates a
    Secret volume: a new ``..<timestamp>`` folder, the ``..data`` link
    swapped to it with a rename, ``name -> ..data/name`` links, and the
    previous folder removed."""
    root.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in root.iterdir() if p.name.startswith("..20"))
    stamp = root / f"..2026_01_01_00_00_00.{len(old) + 1:09d}"
    stamp.mkdir()
    for name, data in files.items():
        (stamp / name).write_bytes(data)
    os.symlink(stamp.name, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            os.symlink(f"..data/{name}", root / name)
    for folder in old:
        shutil.rmtree(folder)


def leaf_of(cert):
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())


def pump(client, server) -> None:
    """Move bytes between two memory-BIO connections until both are idle."""
    for _ in range(50):
        moved = False
        for a, b in ((client, server), (server, client)):
            if not a.get_state_string().startswith(b"SSL negotiation finished"):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
            try:
                data = a.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                b.bio_write(data)
                moved = True
        if not moved:
            return


def connect(server_tls, sni=None):
    """A new connection to the listener, handshake done in memory."""
    server = server_tls.serverConnectionForTLS(None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    if sni:
        client.set_tlsext_host_name(sni.encode())
    pump(client, server)
    return client, server


def served(server_tls, sni=None):
    """The leaf certificate a new connection with this SNI is served."""
    client, _ = connect(server_tls, sni)
    return client.get_peer_certificate(as_cryptography=True)


def still_talks(client, server) -> bool:
    """Whether an established connection still carries data both ways."""
    client.sendall(b"ping")
    pump(client, server)
    if server.recv(4) != b"ping":
        return False
    server.sendall(b"pong")
    pump(client, server)
    return client.recv(4) == b"pong"


def errors(events) -> list:
    return [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]


def infos(events) -> list:
    return [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]


@pytest.fixture
def main(tmp_path, ca):
    """A listener with a main certificate for old.example; its logs."""
    cert_path, key_path = install(tmp_path / "certs", "tls", ca.issue_cert("old.example"))
    log, events = capture()
    server_tls = ServerTLS.from_config(
        config(tls_cert_path=cert_path, tls_key_path=key_path), log
    )
    del events[:]  # startup lines
    return server_tls, cert_path, key_path, events


# ---------------------------------------------------------------------------
# The main certificate


def test_rotated_main_certificate_reaches_new_connections_only(main):
    server_tls, cert_path, key_path, events = main
    before = connect(server_tls, "old.example")
    other = trustme.CA().issue_cert("new.example")  # another CA, another SAN
    put(key_path, other.private_key_pem.bytes())
    put(cert_path, chain_pem(other))
    assert server_tls.reload()
    leaf = served(server_tls, "old.example")
    assert tls._san_names(leaf) == ("new.example",)
    assert leaf.serial_number == leaf_of(other).serial_number
    assert served(server_tls).serial_number == leaf_of(other).serial_number  # no SNI
    assert server_tls.names == ("new.example",)
    # the connection made before keeps its certificate and keeps working
    client, server = before
    assert tls._san_names(client.get_peer_certificate(as_cryptography=True)) == (
        "old.example",
    )
    assert still_talks(client, server)
    assert infos(events) == [f"TLS certificate {cert_path} reloaded: serves new.example"]
    assert errors(events) == []


def test_watcher_looks_every_interval_of_its_clock(main, ca):
    server_tls, cert_path, key_path, events = main
    clock = Clock()
    watcher = server_tls.watcher(clock)
    assert RELOAD_INTERVAL <= 5
    watcher.startService()
    new = ca.issue_cert("new.example")
    put(key_path, new.private_key_pem.bytes())
    put(cert_path, chain_pem(new))
    clock.advance(RELOAD_INTERVAL - 0.01)
    assert tls._san_names(served(server_tls)) == ("old.example",)
    clock.advance(0.01)
    assert tls._san_names(served(server_tls)) == ("new.example",)
    watcher.stopService()
    assert clock.getDelayedCalls() == []
    later = ca.issue_cert("later.example")
    put(key_path, later.private_key_pem.bytes())
    put(cert_path, chain_pem(later))
    clock.advance(RELOAD_INTERVAL * 3)
    assert tls._san_names(served(server_tls)) == ("new.example",)


def test_watcher_keeps_looking_after_an_unexpected_error(main, monkeypatch):
    server_tls, *_ = main
    clock = Clock()
    watcher = server_tls.watcher(clock)
    calls = []

    def reload():
        calls.append(clock.seconds())
        if len(calls) == 1:
            raise RuntimeError("boom")
        return False

    monkeypatch.setattr(server_tls, "reload", reload)
    watcher.startService()
    clock.advance(RELOAD_INTERVAL)
    clock.advance(RELOAD_INTERVAL)
    assert len(calls) == 2
    watcher.stopService()


def test_nothing_is_read_while_nothing_changes(main, monkeypatch):
    server_tls, cert_path, key_path, events = main
    reads = []
    real = listener_tls.load_pair
    monkeypatch.setattr(listener_tls, "load_pair", lambda *a: reads.append(a) or real(*a))
    for _ in range(3):
        assert not server_tls.reload()
    assert reads == []
    # rewritten with the same content: read once, nothing switched or logged
    before = server_tls.material.main
    with open(cert_path, "rb") as f:
        put(cert_path, f.read())
    assert not server_tls.reload()
    assert not server_tls.reload()
    assert len(reads) == 1
    assert server_tls.material.main is before
    assert events == []


def test_broken_main_certificate_keeps_the_previous_one_and_logs_once(main, ca):
    server_tls, cert_path, key_path, events = main
    old_serial = served(server_tls).serial_number
    with open(cert_path, "wb") as f:  # written in place, and not PEM
        f.write(b"not a certificate\n")
    for _ in range(3):
        assert not server_tls.reload()
    assert served(server_tls).serial_number == old_serial
    [line] = errors(events)
    assert cert_path in line and "no PEM certificate" in line
    assert "still serving the previous certificate" in line
    assert "\n" not in line
    with open(cert_path, "wb") as f:  # broken again, the same way
        f.write(b"still not a certificate\n")
    assert not server_tls.reload()
    assert len(errors(events)) == 1
    # fixed: served from the next look on
    new = ca.issue_cert("new.example")
    put(key_path, new.private_key_pem.bytes())
    put(cert_path, chain_pem(new))
    assert server_tls.reload()
    assert tls._san_names(served(server_tls)) == ("new.example",)
    assert len(errors(events)) == 1
    # broken again after having been fixed: a new broken state, logged again
    with open(cert_path, "wb") as f:
        f.write(b"not a certificate\n")
    assert not server_tls.reload()
    assert tls._san_names(served(server_tls)) == ("new.example",)
    assert errors(events)[1:] == [line]
    # and broken another way: one more line, naming the key
    os.remove(key_path)
    assert not server_tls.reload()
    assert len(errors(events)) == 3
    assert key_path in errors(events)[2] and "cannot read key" in errors(events)[2]


def test_key_that_does_not_match_is_refused(main, ca):
    server_tls, cert_path, key_path, events = main
    new = ca.issue_cert("new.example")
    put(cert_path, chain_pem(new))  # the key is still the old one
    assert not server_tls.reload()
    assert tls._san_names(served(server_tls)) == ("old.example",)
    [line] = errors(events)
    assert f"cannot use key {key_path} with {cert_path}" in line
    put(key_path, new.private_key_pem.bytes())  # the other half arrives
    assert server_tls.reload()
    assert tls._san_names(served(server_tls)) == ("new.example",)


def test_half_written_chain_is_refused(main):
    server_tls, cert_path, key_path, events = main
    intermediate = trustme.CA().create_child_ca()
    new = intermediate.issue_cert("new.example")
    put(key_path, new.private_key_pem.bytes())
    pem = chain_pem(new)
    with open(cert_path, "wb") as f:  # the leaf and half of the intermediate
        f.write(pem[: len(pem) - 300])
    assert not server_tls.reload()
    assert tls._san_names(served(server_tls)) == ("old.example",)
    [line] = errors(events)
    assert cert_path in line and "incomplete" in line
    with open(cert_path, "wb") as f:
        f.write(pem)
    assert server_tls.reload()
    client, _ = connect(server_tls)
    assert len(client.get_peer_cert_chain()) == 2  # the intermediate is sent


def test_files_changing_while_read_are_read_again_quietly(main, ca, monkeypatch):
    server_tls, cert_path, key_path, events = main
    new = ca.issue_cert("new.example")
    real = listener_tls.load_pair

    def interrupted(*args):
        monkeypatch.setattr(listener_tls, "load_pair", real)
        pair = None
        try:
            pair = real(*args)  # the new certificate with the old key: a mismatch
        finally:
            put(key_path, new.private_key_pem.bytes())  # the writer goes on
        return pair

    put(cert_path, chain_pem(new))
    monkeypatch.setattr(listener_tls, "load_pair", interrupted)
    assert not server_tls.reload()
    assert errors(events) == []  # half a rotation is not reported
    assert tls._san_names(served(server_tls)) == ("old.example",)
    assert server_tls.reload()
    assert tls._san_names(served(server_tls)) == ("new.example",)
    assert errors(events) == []


def test_kubernetes_secret_volume_swap_is_seen(tmp_path, ca):
    volume = tmp_path / "certs"
    first = ca.issue_cert("old.example")
    k8s_volume(volume, {"tls.crt": chain_pem(first), "tls.key": first.private_key_pem.bytes()})
    log, events = capture()
    server_tls = ServerTLS.from_config(
        config(tls_cert_path=str(volume / "tls.crt"), tls_key_path=str(volume / "tls.key")),
        log,
    )
    assert not server_tls.reload()
    second = ca.issue_cert("new.example")
    # the links tls.crt and tls.key themselves do not change: only ..data
    link = os.lstat(volume / "tls.crt")
    k8s_volume(volume, {"tls.crt": chain_pem(second), "tls.key": second.private_key_pem.bytes()})
    assert os.lstat(volume / "tls.crt").st_ino == link.st_ino
    assert server_tls.reload()
    assert served(server_tls).serial_number == leaf_of(second).serial_number
    assert errors(events) == []


# ---------------------------------------------------------------------------
# The certificate store


@pytest.fixture
def store(tmp_path, ca):
    """A listener with a store (a.example) and no main certificate."""
    folder = tmp_path / "store"
    install(folder, "a", ca.issue_cert("a.example"))
    log, events = capture()
    server_tls = ServerTLS.from_config(config(tls_cert_store_paths=(str(folder),)), log)
    del events[:]
    return server_tls, folder, events


def test_store_gains_and_loses_certificates(store, ca):
    server_tls, folder, events = store
    with pytest.raises(SSL.Error):
        served(server_tls, "b.example")  # no main certificate to fall back on
    b = ca.issue_cert("b.example")
    install(folder / "more", "b", b)
    assert server_tls.reload()
    assert served(server_tls, "b.example").serial_number == leaf_of(b).serial_number
    assert tls._san_names(served(server_tls, "a.example")) == ("a.example",)
    assert server_tls.names == ("a.example", "b.example")
    assert infos(events) == [f"TLS certificate {folder / 'more' / 'b.crt'} serves b.example"]
    os.remove(folder / "a.crt")
    os.remove(folder / "a.key")
    assert server_tls.reload()
    assert server_tls.names == ("b.example",)
    with pytest.raises(SSL.Error):
        served(server_tls, "a.example")
    assert errors(events) == []


def test_store_certificate_rotated(store, ca):
    server_tls, folder, events = store
    before = connect(server_tls, "a.example")
    new = trustme.CA().issue_cert("a.example")
    install(folder, "a", new)
    assert server_tls.reload()
    assert served(server_tls, "a.example").serial_number == leaf_of(new).serial_number
    assert still_talks(*before)
    assert infos(events) == [
        f"TLS certificate {folder / 'a.crt'} reloaded: serves a.example"
    ]


def test_broken_store_certificate_keeps_the_previous_one(store, ca):
    server_tls, folder, events = store
    old_serial = served(server_tls, "a.example").serial_number
    (folder / "a.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    b = ca.issue_cert("b.example")
    install(folder, "b", b)  # a good one arriving at the same time is served
    assert server_tls.reload()
    assert served(server_tls, "a.example").serial_number == old_serial
    assert served(server_tls, "b.example").serial_number == leaf_of(b).serial_number
    [line] = errors(events)
    assert str(folder / "a.crt") in line and "still serving the previous certificate" in line
    assert not server_tls.reload()
    install(folder, "c", ca.issue_cert("c.example"))  # another change: a is tried again
    assert server_tls.reload()
    assert len(errors(events)) == 1
    fixed = ca.issue_cert("a.example")
    install(folder, "a", fixed)
    assert server_tls.reload()
    assert served(server_tls, "a.example").serial_number == leaf_of(fixed).serial_number


def test_new_store_certificate_without_key_is_served_once_it_has_one(store, ca):
    server_tls, folder, events = store
    d = ca.issue_cert("d.example")
    put(str(folder / "d.crt"), chain_pem(d))
    assert not server_tls.reload()
    assert server_tls.names == ("a.example",)
    [line] = errors(events)
    assert f"no key found for certificate {folder / 'd.crt'}" in line
    assert line.endswith("; not served")
    put(str(folder / "d.key"), d.private_key_pem.bytes())
    assert server_tls.reload()
    assert served(server_tls, "d.example").serial_number == leaf_of(d).serial_number


def test_store_folder_gone_keeps_the_store(store, ca):
    server_tls, folder, events = store
    shutil.rmtree(folder)
    assert not server_tls.reload()
    assert not server_tls.reload()
    assert tls._san_names(served(server_tls, "a.example")) == ("a.example",)
    [line] = errors(events)
    assert f"cannot walk {folder}" in line
    assert "still serving the previous certificate" in line
    new = ca.issue_cert("a.example")
    install(folder, "a", new)
    assert server_tls.reload()
    assert served(server_tls, "a.example").serial_number == leaf_of(new).serial_number


def test_sub_folder_vanishing_during_the_walk_is_not_an_error(store, ca, monkeypatch):
    """kubelet removes the previous ``..<timestamp>`` folder right after
    the swap; a walk that lists it and then cannot enter it goes on."""
    server_tls, folder, events = store
    real_walk = os.walk

    def walk(top, onerror=None, **kw):
        yield from real_walk(top, onerror=onerror, **kw)
        onerror(FileNotFoundError(2, "No such file or directory", str(folder / "..2026_old")))

    monkeypatch.setattr(tls.os, "walk", walk)
    b = ca.issue_cert("b.example")
    install(folder, "b", b)
    assert server_tls.reload()
    assert served(server_tls, "b.example").serial_number == leaf_of(b).serial_number
    assert errors(events) == []


def test_store_built_without_its_folders_is_left_as_built(tmp_path, ca):
    """A ServerTLS made from material alone (no folders to look at) keeps
    its store when the main certificate rotates."""
    folder = tmp_path / "store"
    install(folder, "a", ca.issue_cert("a.example"))
    main_pair = install(tmp_path / "certs", "tls", ca.issue_cert("main.example"))
    c = config(tls_cert_path=main_pair[0], tls_key_path=main_pair[1],
               tls_cert_store_paths=(str(folder),))
    server_tls = ServerTLS(tls.TLSPolicy.from_config(c), tls.TLSMaterial.from_config(c))
    install(tmp_path / "certs", "tls", ca.issue_cert("new.example"))
    assert server_tls.reload()
    assert tls._san_names(served(server_tls, "a.example")) == ("a.example",)
    assert tls._san_names(served(server_tls, "b.example")) == ("new.example",)


def test_store_folder_as_a_kubernetes_secret_volume(tmp_path, ca):
    volume = tmp_path / "shop"
    first = ca.issue_cert("shop.example")
    k8s_volume(volume, {"shop.crt": chain_pem(first), "shop.key": first.private_key_pem.bytes()})
    log, events = capture()
    server_tls = ServerTLS.from_config(config(tls_cert_store_paths=(str(volume),)), log)
    second = ca.issue_cert("shop.example")
    k8s_volume(volume, {"shop.crt": chain_pem(second),
                        "shop.key": second.private_key_pem.bytes()})
    assert server_tls.reload()
    assert served(server_tls, "shop.example").serial_number == leaf_of(second).serial_number
    assert errors(events) == []


# ---------------------------------------------------------------------------
# Wiring and real connections


def test_build_service_watches_the_tls_listener_certificates(main):
    server_tls, *_ = main
    thresholds = gc.get_threshold()
    try:
        svc = build_service(reactor, config(proxy_tls_port=0), lambda store: Service(),
                            server_tls=server_tls)
    finally:
        gc.set_threshold(*thresholds)
    [watcher] = [s for s in svc if isinstance(s, CertificateWatcher)]
    assert watcher.server_tls is server_tls
    assert watcher.clock is reactor
    assert watcher.interval == RELOAD_INTERVAL
    plain = build_service(reactor, config(), lambda store: Service())
    gc.set_threshold(*thresholds)
    assert not [s for s in plain if isinstance(s, CertificateWatcher)]


@implementer(IHandshakeListener)
class Talker(Protocol):
    """A client connection that reports its handshake and what it receives."""

    def __init__(self):
        self.handshook = Deferred()
        self.received = b""

    def handshakeCompleted(self):
        self.handshook.callback(self.transport.getHandle())

    def dataReceived(self, data):
        self.received += data


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


@pytest.fixture
def echo_listener():
    opened = []

    @inlineCallbacks
    def start(server_tls):
        port = yield server_tls.endpoint(reactor, 0, "127.0.0.1").listen(
            Factory.forProtocol(Echo)
        )
        opened.append(port)
        return port.getHost().port

    yield start
    for port in opened:
        pytest_twisted.blockon(port.stopListening())


@pytest_twisted.inlineCallbacks
def test_listener_serves_a_rotated_certificate_to_new_connections(main, echo_listener):
    server_tls, cert_path, key_path, events = main
    port = yield echo_listener(server_tls)
    watcher = server_tls.watcher(reactor, interval=0.05)
    watcher.startService()
    try:
        talker = Talker()
        endpoint = wrapClientTLS(ProbeClient("old.example"),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        yield connectProtocol(endpoint, talker)
        conn = yield talker.handshook
        other = trustme.CA().issue_cert("new.example")
        put(key_path, other.private_key_pem.bytes())
        put(cert_path, chain_pem(other))
        names = []

        @inlineCallbacks
        def look():
            result = yield handshake(ProbeClient("old.example"), port)
            names.append(result.names)

        deadline = reactor.seconds() + 10
        while not names or names[-1] != ("new.example",):
            assert reactor.seconds() < deadline, f"still served {names[-1:]}"
            yield look()
        # the connection made before the rotation is untouched
        assert tls._san_names(conn.get_peer_certificate(as_cryptography=True)) == (
            "old.example",
        )
        talker.transport.write(b"still here")
        yield wait_for(lambda: talker.received == b"still here", timeout=10,
                       what="the echo on the old connection")
        talker.transport.loseConnection()
    finally:
        watcher.stopService()


@pytest_twisted.inlineCallbacks
def test_listener_keeps_serving_through_a_broken_file(main, echo_listener, ca):
    server_tls, cert_path, key_path, events = main
    port = yield echo_listener(server_tls)
    with open(key_path, "wb") as f:
        f.write(b"-----BEGIN PRIVATE KEY-----\ntruncated")
    server_tls.reload()
    assert (yield handshake(ProbeClient("old.example"), port)).names == ("old.example",)
    [line] = errors(events)
    assert key_path in line
    new = ca.issue_cert("new.example")
    put(key_path, new.private_key_pem.bytes())
    put(cert_path, chain_pem(new))
    server_tls.reload()
    assert (yield handshake(ProbeClient("old.example"), port)).names == ("new.example",)


@pytest_twisted.inlineCallbacks
def test_listener_serves_a_certificate_added_to_the_store(tmp_path, ca, echo_listener):
    folder = tmp_path / "store"
    install(folder, "a", ca.issue_cert("a.example"))
    main_pair = install(tmp_path / "certs", "tls", ca.issue_cert("main.example"))
    server_tls = ServerTLS.from_config(config(
        tls_cert_path=main_pair[0], tls_key_path=main_pair[1],
        tls_cert_store_paths=(str(folder),)))
    port = yield echo_listener(server_tls)
    assert (yield handshake(ProbeClient("b.example"), port)).names == ("main.example",)
    install(folder, "b", ca.issue_cert("b.example"))
    server_tls.reload()
    assert (yield handshake(ProbeClient("b.example"), port)).names == ("b.example",)
    assert (yield handshake(ProbeClient("a.example"), port)).names == ("a.example",)
