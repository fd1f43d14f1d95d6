"""
TLS on both sides, with real certificates made at test time (trustme) and
real handshakes over loopback.

Upstream: a "pod" listening on 127.0.0.1 is dialled by IP while SNI and
verification use the Service name.  Listener: the certificate is chosen by
SNI from the main certificate and the certificate store.
"""

from __future__ import annotations

import datetime

import attrs
import pytest
import pytest_twisted
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer
from zope.interface.verify import verifyObject

from keda_proxy import _tls as tls
from keda_proxy._tls import TLSConfigError, TLSPolicy
from keda_proxy.downstream._tls import ServerTLS, sni_lookup
from keda_proxy.ops._config import Config
from keda_proxy.upstream._dial import StaticResolver, UpstreamEndpoints
from keda_proxy.upstream._tls import CREATOR_CACHE_SIZE, MissingServerName, UpstreamTLS

# ---------------------------------------------------------------------------
# Helpers


@attrs.frozen
class Handshake:
    names: tuple  # DNS/IP SANs of the peer's leaf certificate
    version: str
    cipher: str
    group: str | None
    alpn: bytes


@implementer(IHandshakeListener)
class Probe(Protocol):
    """Reports the finished handshake, or the reason it failed."""

    def __init__(self):
        self.done = Deferred()

    def handshakeCompleted(self):
        conn = self.transport.getHandle()
        leaf = conn.get_peer_certificate(as_cryptography=True)
        self.done.callback(
            Handshake(
                names=tls._san_names(leaf),
                version=conn.get_protocol_version_name(),
                cipher=conn.get_cipher_name(),
                group=conn.get_group_name(),
                alpn=conn.get_alpn_proto_negotiated(),
            )
        )
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """Server side of a fake pod: records the SNI and client certificate."""

    def handshakeCompleted(self):
        conn = self.transport.getHandle()
        self.factory.seen.put(
            (conn.get_servername(), conn.get_peer_certificate(as_cryptography=True))
        )


@implementer(IOpenSSLClientConnectionCreator)
class ProbeClient:
    """A non-verifying test client with optional SNI, version cap, ALPN."""

    def __init__(self, sni=None, max_version=None, alpn=(b"h2", b"http/1.1")):
        self.sni = sni
        self.ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if max_version is not None:
            self.ctx.set_max_proto_version(max_version)
        self.ctx.set_alpn_protos(list(alpn))

    def clientConnectionForTLS(self, tlsProtocol):
        conn = SSL.Connection(self.ctx, None)
        if self.sni:
            conn.set_tlsext_host_name(self.sni.encode())
        return conn


@inlineCallbacks
def handshake(creator, port):
    """Dial 127.0.0.1:port (by IP) through C{creator}; the Handshake."""
    probe = Probe()
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    yield connectProtocol(endpoint, probe)
    return (yield probe.done)


@inlineCallbacks
def handshake_error(creator, port):
    """Like L{handshake}, but the handshake must fail; the exception."""
    try:
        result = yield handshake(creator, port)
    except Exception as e:  # noqa: BLE001 - the failure is the result
        return e
    raise AssertionError(f"handshake unexpectedly succeeded: {result}")


def config(**kw):
    kw.setdefault("tls_cert_path", "")
    kw.setdefault("tls_key_path", "")
    return Config(proxy_port=0, admin_port=0, proxy_tls_enabled=True, **kw)


def write_pair(folder, stem, cert, style="crt", with_ca=None):
    """Write C{cert} as ``stem.crt``/``stem.key`` or ``stem.pem``/``stem-key.pem``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_name, key_name = (
        (f"{stem}.crt", f"{stem}.key") if style == "crt" else (f"{stem}.pem", f"{stem}-key.pem")
    )
    pem = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    if with_ca is not None:
        pem += with_ca.cert_pem.bytes()
    (folder / cert_name).write_bytes(pem)
    cert.private_key_pem.write_to_path(str(folder / key_name))
    return str(folder / cert_name), str(folder / key_name)


@attrs.frozen
class SanlessLeaf:
    """A leaf issued by C{ca} whose only name is its Common Name (no
    subjectAltName): configure_cert() as trustme's certificates have."""

    cert: x509.Certificate
    key: object

    @classmethod
    def issue(cls, ca, common_name):
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(serialization.load_pem_private_key(ca.private_key_pem.bytes(), None),
                  hashes.SHA256())
        )
        return cls(cert, key)

    def configure_cert(self, ctx):
        ctx.use_certificate(self.cert)
        ctx.use_privatekey(self.key)


def capture():
    events = []
    return Logger(observer=events.append), events


@pytest.fixture
def ports():
    """Listening ports, closed after the test."""
    opened = []
    yield opened
    for port in opened:
        pytest_twisted.blockon(maybeDeferred(port.stopListening))


@implementer(IOpenSSLServerConnectionCreator)
class PodTLS:
    """A fake pod's TLS: presents C{cert}, speaks http/1.1, and requires a
    client certificate issued by C{client_ca_file} when given."""

    def __init__(self, cert, client_ca_file=None, max_version=None):
        self.ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        cert.configure_cert(self.ctx)
        if max_version is not None:
            self.ctx.set_max_proto_version(max_version)
        self.ctx.set_alpn_select_callback(lambda conn, offered: b"http/1.1")
        if client_ca_file is not None:
            self.ctx.load_verify_locations(client_ca_file)
            self.ctx.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: a[-1]
            )

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.ctx, None)


@pytest.fixture
def pod(ports, tmp_path):
    """Start a fake TLS pod on 127.0.0.1 presenting C{cert}; its factory
    queues (SNI, client certificate) per completed server handshake."""

    def start(cert, client_ca=None, max_version=None):
        ca_file = None
        if client_ca is not None:
            ca_file = str(tmp_path / "client-ca.pem")
            client_ca.cert_pem.write_to_path(ca_file)
        factory = Factory.forProtocol(Recorder)
        factory.seen = DeferredQueue()
        port = reactor.listenSSL(0, factory, PodTLS(cert, ca_file, max_version),
                                 interface="127.0.0.1")
        ports.append(port)
        return port.getHost().port, factory

    return start


@pytest.fixture
def trusting(tmp_path, ca):
    """Config for an interceptor whose own certificate (with its private CA
    in the chain file, as cert-manager writes it) is issued by C{ca}."""
    cert_path, key_path = write_pair(
        tmp_path / "certs", "tls", ca.issue_cert("interceptor.keda"), with_ca=ca
    )
    return lambda **kw: config(tls_cert_path=cert_path, tls_key_path=key_path, **kw)


# ---------------------------------------------------------------------------
# Upstream TLS


@pytest_twisted.inlineCallbacks
def test_pod_reached_by_ip_is_verified_against_the_service_name(ca, pod, trusting):
    port, factory = pod(ca.issue_cert("web.default"))
    upstream = UpstreamTLS.from_config(trusting())
    result = yield handshake(upstream.creatorForNetloc(b"web.default", port), port)
    assert result.names == ("web.default",)
    assert result.alpn == b"http/1.1"
    sni, _ = yield factory.seen.get()
    assert sni == b"web.default"


@pytest_twisted.inlineCallbacks
def test_certificate_for_another_name_fails_verification(ca, pod, trusting):
    port, _ = pod(ca.issue_cert("other.default"))
    upstream = UpstreamTLS.from_config(trusting())
    error = yield handshake_error(upstream.creatorForNetloc(b"web.default", port), port)
    assert isinstance(error, VerificationError)


@pytest_twisted.inlineCallbacks
def test_certificate_without_subject_alt_name_fails_verification(ca, pod, trusting):
    """The Common Name is not a name: a trusted leaf with no SAN is refused
    (and so is a malformed SAN), it does not slip through as an error the
    name check could not classify."""
    port, _ = pod(SanlessLeaf.issue(ca, "web.default"))
    upstream = UpstreamTLS.from_config(trusting())
    error = yield handshake_error(upstream.creatorForNetloc(b"web.default", port), port)
    assert isinstance(error, VerificationError)
    port, _ = pod(ca.issue_cert("10.0.0.1"))  # IP SAN: no DNS pattern to match
    error = yield handshake_error(upstream.creatorForNetloc(b"web.default", port), port)
    assert isinstance(error, VerificationError)


@pytest_twisted.inlineCallbacks
def test_skip_verify_accepts_the_wrong_name_but_still_sends_sni(ca, pod, trusting):
    port, factory = pod(ca.issue_cert("other.default"))
    log, events = capture()
    upstream = UpstreamTLS.from_config(trusting(tls_skip_verify=True), log)
    result = yield handshake(upstream.creatorForNetloc(b"web.default", port), port)
    assert result.names == ("other.default",)
    assert (yield factory.seen.get())[0] == b"web.default"
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert len(warnings) == 1
    assert "KEDA_HTTP_TLS_SKIP_VERIFY is true" in warnings[0]["log_format"]
    upstream.creatorForNetloc(b"other.default", 443)
    assert len([e for e in events if e["log_level"] is LogLevel.warn]) == 1


@pytest.mark.parametrize("name", ["", None])
def test_dial_without_server_name_is_refused(trusting, name):
    upstream = UpstreamTLS.from_config(trusting())
    with pytest.raises(MissingServerName):
        upstream.creatorForNetloc(name, 443)
    skipping = UpstreamTLS.from_config(trusting(tls_skip_verify=True))
    with pytest.raises(MissingServerName):
        skipping.creatorForNetloc(name, 443)


def test_one_creator_and_context_per_server_name(trusting):
    upstream = UpstreamTLS.from_config(trusting())
    web = upstream.creatorForNetloc(b"web.default", 443)
    assert upstream.creatorForNetloc(b"web.default", 443) is web
    assert upstream.creatorForNetloc("web.default", 8443) is web  # any port, text too
    fallback = upstream.creatorForNetloc(b"fallback.default", 443)
    assert fallback is not web
    assert fallback.server_name == "fallback.default"
    assert web.context is not fallback.context  # optionsForClientTLS per name


def test_upstream_tls_is_a_policy_for_https(trusting):
    assert verifyObject(IPolicyForHTTPS, UpstreamTLS.from_config(trusting()))
    assert verifyObject(IPolicyForHTTPS,
                        UpstreamTLS.from_config(trusting(tls_skip_verify=True)))


def test_creator_cache_keeps_the_most_recently_used_names(trusting):
    """Bounded at CREATOR_CACHE_SIZE names: the N+1th evicts the oldest."""
    upstream = UpstreamTLS.from_config(trusting())
    size = CREATOR_CACHE_SIZE
    assert upstream.cache_size == size == 256
    names = [f"svc{i}.default".encode() for i in range(size + 1)]
    first = [upstream.creatorForNetloc(name, 443) for name in names]
    for name, creator in zip(names[1:], first[1:], strict=True):  # hits: nothing evicted
        assert upstream.creatorForNetloc(name, 443) is creator
    rebuilt = upstream.creatorForNetloc(names[0], 443)
    assert rebuilt is not first[0]
    assert rebuilt.server_name == "svc0.default"
    # ... which in turn evicted names[1], now the least recently used
    assert upstream.creatorForNetloc(names[2], 443) is first[2]
    assert upstream.creatorForNetloc(names[1], 443) is not first[1]


def test_creator_cache_is_least_recently_used(trusting):
    upstream = UpstreamTLS.from_config(trusting(tls_skip_verify=True), cache_size=2)
    a = upstream.creatorForNetloc(b"a.default", 443)
    b = upstream.creatorForNetloc(b"b.default", 443)
    assert upstream.creatorForNetloc(b"a.default", 443) is a  # a is now the newest
    upstream.creatorForNetloc(b"c.default", 443)  # evicts b
    assert upstream.creatorForNetloc(b"a.default", 443) is a
    assert upstream.creatorForNetloc(b"b.default", 443) is not b


@pytest_twisted.inlineCallbacks
def test_unknown_private_ca_is_not_trusted(pod, trusting):
    other_ca = trustme.CA()
    port, _ = pod(other_ca.issue_cert("web.default"))
    upstream = UpstreamTLS.from_config(trusting())
    error = yield handshake_error(upstream.creatorForNetloc(b"web.default", port), port)
    assert isinstance(error, SSL.Error)


@pytest_twisted.inlineCallbacks
def test_store_certificates_are_trusted_even_as_leaves(tmp_path, pod, trusting):
    """A leaf from the certificate store is a trust anchor, as in Go's
    RootCAs, even though its issuing CA is configured nowhere."""
    private_ca = trustme.CA()
    leaf = private_ca.issue_cert("web.default")
    write_pair(tmp_path / "store", "web", leaf)
    port, _ = pod(leaf)
    without = UpstreamTLS.from_config(trusting())
    assert isinstance((yield handshake_error(without.creatorForNetloc(b"web.default", port), port)),
                      SSL.Error)
    upstream = UpstreamTLS.from_config(
        trusting(tls_cert_store_paths=(str(tmp_path / "store"),))
    )
    result = yield handshake(upstream.creatorForNetloc(b"web.default", port), port)
    assert result.names == ("web.default",)


@pytest_twisted.inlineCallbacks
def test_system_trust_is_kept(tmp_path, monkeypatch, pod):
    """OpenSSL's default verify paths (the system CAs) are in the trust
    store: pointed at a CA through SSL_CERT_FILE, that CA is trusted with
    no certificate configured; pointed elsewhere, it is not."""
    system_ca, elsewhere = trustme.CA(), trustme.CA()
    system_ca.cert_pem.write_to_path(str(tmp_path / "system.pem"))
    elsewhere.cert_pem.write_to_path(str(tmp_path / "elsewhere.pem"))
    port, _ = pod(system_ca.issue_cert("web.default"))

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "system.pem"))
    upstream = UpstreamTLS.from_config(config())
    result = yield handshake(upstream.creatorForNetloc(b"web.default", port), port)
    assert result.names == ("web.default",)

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "elsewhere.pem"))
    upstream = UpstreamTLS.from_config(config())
    creator = upstream.creatorForNetloc(b"web.default", port)
    assert isinstance((yield handshake_error(creator, port)), SSL.Error)


@pytest_twisted.inlineCallbacks
def test_ip_server_name_is_verified_without_sni(ca, pod, trusting):
    port, factory = pod(ca.issue_cert("127.0.0.1"))
    upstream = UpstreamTLS.from_config(trusting())
    result = yield handshake(upstream.creatorForNetloc(b"127.0.0.1", port), port)
    assert result.names == ("127.0.0.1",)
    assert (yield factory.seen.get())[0] is None


@pytest_twisted.inlineCallbacks
def test_client_side_shares_the_policy_and_presents_the_main_certificate(
    ca, pod, trusting
):
    port, factory = pod(ca.issue_cert("web.default"), client_ca=ca)
    upstream = UpstreamTLS.from_config(trusting(tls_max_version="1.2"))
    result = yield handshake(upstream.creatorForNetloc(b"web.default", port), port)
    assert result.version == "TLSv1.2"
    _, client_cert = yield factory.seen.get()
    assert tls._san_names(client_cert) == ("interceptor.keda",)


@pytest_twisted.inlineCallbacks
def test_client_side_applies_versions_cipher_suites_and_curves(ca, pod, trusting):
    port, _ = pod(ca.issue_cert("web.default"))
    upstream = UpstreamTLS.from_config(
        trusting(
            tls_max_version="1.2",
            tls_cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",),
            # P-256 too, for the pod's certificate: in TLS 1.2 the client's
            # groups also bound the curve of an ECDSA certificate
            tls_curve_preferences=("CurveP384", "CurveP256"),
        )
    )
    result = yield handshake(upstream.creatorForNetloc(b"web.default", port), port)
    assert (result.version, result.cipher, result.group) == (
        "TLSv1.2",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "secp384r1",
    )
    port, _ = pod(ca.issue_cert("web.default"), max_version=SSL.TLS1_2_VERSION)
    upstream = UpstreamTLS.from_config(trusting(tls_min_version="1.3"))
    error = yield handshake_error(upstream.creatorForNetloc(b"web.default", port), port)
    assert isinstance(error, SSL.Error)


@pytest_twisted.inlineCallbacks
def test_upstream_endpoints_dial_the_pod_ip_with_the_service_name(ca, pod, trusting):
    """Through L{UpstreamEndpoints}, as the pool dials: the pool key's host
    is the pod IP, its server name the Service's hostname."""
    port, factory = pod(ca.issue_cert("web.default"))
    endpoints = UpstreamEndpoints(reactor, StaticResolver(),
                                  tls=UpstreamTLS.from_config(trusting()))
    probe = Probe()
    endpoint = endpoints.endpoint_for((b"https", "127.0.0.1", port, "web.default"), 1.0)
    yield endpoint.connect(Factory.forProtocol(lambda: probe))
    assert (yield probe.done).names == ("web.default",)
    assert (yield factory.seen.get())[0] == b"web.default"
    # no server name: the dial fails (a 502 upstream), it is never attempted
    refused = endpoints.endpoint_for((b"https", "127.0.0.1", port, ""), 1.0)
    with pytest.raises(MissingServerName):
        yield refused.connect(Factory.forProtocol(lambda: probe))


# ---------------------------------------------------------------------------
# The TLS listener


@pytest.fixture
def listener(ports):
    @inlineCallbacks
    def start(server_tls):
        port = yield server_tls.endpoint(reactor, 0, "127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        ports.append(port)
        return port.getHost().port

    return start


@pytest.fixture
def store(tmp_path, ca):
    """A store with a.example (nested, .crt/.key) and *.wild.example
    (.pem/-key.pem), plus a main certificate for main.example."""
    write_pair(tmp_path / "store" / "nested", "a", ca.issue_cert("a.example"))
    write_pair(tmp_path / "store", "wild", ca.issue_cert("*.wild.example"), style="pem")
    main = write_pair(tmp_path / "main", "tls", ca.issue_cert("main.example"))
    return main, str(tmp_path / "store")


@pytest_twisted.inlineCallbacks
def test_listener_selects_the_certificate_by_sni(store, listener):
    (cert_path, key_path), folder = store
    server_tls = ServerTLS.from_config(
        config(tls_cert_path=cert_path, tls_key_path=key_path, tls_cert_store_paths=(folder,))
    )
    assert server_tls.names == ("*.wild.example", "a.example", "main.example")
    port = yield listener(server_tls)
    expected = {
        "a.example": ("a.example",),
        "b.example": ("main.example",),
        "x.wild.example": ("*.wild.example",),
        "A.Example": ("a.example",),
        None: ("main.example",),
    }
    for sni, names in expected.items():
        result = yield handshake(ProbeClient(sni), port)
        assert result.names == names, sni
        assert result.alpn == b"h2"  # preferred, as Go's listener does
    result = yield handshake(ProbeClient("a.example", alpn=(b"http/1.1",)), port)
    assert result.alpn == b"http/1.1"


@pytest_twisted.inlineCallbacks
def test_without_main_certificate_an_unknown_name_fails(store, listener):
    _, folder = store
    server_tls = ServerTLS.from_config(config(tls_cert_store_paths=(folder,)))
    assert server_tls.certificate_for("b.example") is None
    port = yield listener(server_tls)
    assert (yield handshake(ProbeClient("a.example"), port)).names == ("a.example",)
    error = yield handshake_error(ProbeClient("b.example"), port)
    assert isinstance(error, SSL.Error)


@pytest_twisted.inlineCallbacks
def test_min_version_13_refuses_a_tls12_client(store, listener):
    (cert_path, key_path), _ = store
    server_tls = ServerTLS.from_config(
        config(tls_cert_path=cert_path, tls_key_path=key_path, tls_min_version="1.3")
    )
    port = yield listener(server_tls)
    error = yield handshake_error(ProbeClient("main.example", SSL.TLS1_2_VERSION), port)
    assert isinstance(error, SSL.Error)
    assert (yield handshake(ProbeClient("main.example"), port)).version == "TLSv1.3"


@pytest_twisted.inlineCallbacks
def test_cipher_suites_and_curves_apply(store, listener):
    (cert_path, key_path), _ = store
    server_tls = ServerTLS.from_config(
        config(
            tls_cert_path=cert_path,
            tls_key_path=key_path,
            tls_max_version="1.2",
            tls_cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",),
            tls_curve_preferences=("CurveP384",),
        )
    )
    port = yield listener(server_tls)
    result = yield handshake(ProbeClient("main.example"), port)
    assert (result.version, result.cipher, result.group) == (
        "TLSv1.2",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "secp384r1",
    )


@pytest_twisted.inlineCallbacks
def test_curves_fall_back_to_one_nist_curve(store, listener, monkeypatch):
    monkeypatch.setattr(tls, "_set_groups", None)
    (cert_path, key_path), _ = store
    server_tls = ServerTLS.from_config(
        config(tls_cert_path=cert_path, tls_key_path=key_path,
               tls_curve_preferences=("X25519", "CurveP384"))
    )
    port = yield listener(server_tls)
    assert (yield handshake(ProbeClient("main.example"), port)).group == "secp384r1"
    with pytest.raises(TLSConfigError, match="KEDA_HTTP_TLS_CURVE_PREFERENCES"):
        ServerTLS.from_config(config(tls_curve_preferences=("X25519",)))


# ---------------------------------------------------------------------------
# Startup errors and policy


def test_missing_main_key_names_the_file(tmp_path, ca):
    cert_path, key_path = write_pair(tmp_path, "tls", ca.issue_cert("main.example"))
    missing = str(tmp_path / "nope.key")
    with pytest.raises(TLSConfigError) as info:
        ServerTLS.from_config(config(tls_cert_path=cert_path, tls_key_path=missing))
    message = str(info.value)
    assert message.startswith("KEDA_HTTP_PROXY_TLS_KEY_PATH: ")
    assert missing in message
    assert "\n" not in message
    with pytest.raises(TLSConfigError, match="nope.key"):
        UpstreamTLS.from_config(config(tls_cert_path=cert_path, tls_key_path=missing))


def test_store_certificate_without_key_names_the_file(tmp_path, ca):
    folder = tmp_path / "store"
    folder.mkdir()
    ca.issue_cert("a.example").cert_chain_pems[0].write_to_path(str(folder / "a.crt"))
    ca.issue_cert("b.example").private_key_pem.write_to_path(str(folder / "b.key"))
    with pytest.raises(TLSConfigError) as info:
        ServerTLS.from_config(config(tls_cert_store_paths=(str(folder),)))
    assert "KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS" in str(info.value)
    assert str(folder / "a.crt") in str(info.value)


def test_other_bad_material_stops_startup(tmp_path, ca):
    a = write_pair(tmp_path / "a", "tls", ca.issue_cert("a.example"))
    b = write_pair(tmp_path / "b", "tls", ca.issue_cert("b.example"))
    with pytest.raises(TLSConfigError, match="_KEY_PATH: cannot use key .*b/tls.key"):
        ServerTLS.from_config(config(tls_cert_path=a[0], tls_key_path=b[1]))
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="no PEM certificate in .*junk.crt"):
        ServerTLS.from_config(config(tls_cert_path=str(tmp_path / "junk.crt"),
                                     tls_key_path=a[1]))
    with pytest.raises(TLSConfigError, match="KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS"):
        ServerTLS.from_config(config(tls_cert_store_paths=(str(tmp_path / "absent"),)))


def test_policy_from_config():
    policy = TLSPolicy.from_config(config())
    assert policy == TLSPolicy()
    assert policy.min_version == SSL.TLS1_2_VERSION
    assert policy.max_version is None
    assert b"ECDHE-ECDSA-AES128-GCM-SHA256" in policy.cipher_list
    assert b"RSA-AES" not in policy.cipher_list.replace(b"ECDHE-RSA-AES", b"")
    assert policy.groups is None
    assert TLSPolicy.from_config(
        config(tls_curve_preferences=("X25519", "CurveP256", "P-256"))
    ).groups == b"X25519:prime256v1"
    # Only TLS 1.3 suites: TLS 1.2 has nothing left, as in Go.
    only13 = TLSPolicy.from_config(config(tls_cipher_suites=("TLS_AES_128_GCM_SHA256",)))
    assert only13.min_version == SSL.TLS1_3_VERSION
    with pytest.raises(TLSConfigError,
                       match="KEDA_HTTP_TLS_CIPHER_SUITES: .* KEDA_HTTP_TLS_MAX_VERSION is 1.2"):
        TLSPolicy.from_config(
            config(tls_cipher_suites=("TLS_AES_128_GCM_SHA256",), tls_max_version="1.2")
        )


def test_sni_lookup_prefers_exact_names():
    table = {"a.example": 1, "*.example": 2, "*.b.example": 3}
    assert sni_lookup(table, "a.example") == 1
    assert sni_lookup(table, "z.example.") == 2
    assert sni_lookup(table, "x.b.example") == 3
    assert sni_lookup(table, "x.y.b.example") is None  # one label only
    assert sni_lookup(table, "example") is None
    assert sni_lookup(table, "") is None


def test_san_names_cover_dns_and_ip(ca):
    cert = ca.issue_cert("Web.Default", "10.0.0.1")
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    assert tls._san_names(leaf) == ("web.default", "10.0.0.1")
