# -*- test-case-name: tests.test_tls -*-
"""
TLS towards upstreams, on Twisted's public client API.

Used for the requests that came in on the TLS listener, as in the Go
interceptor (``interceptor/proxy.go``).  L{UpstreamTLS} is an
L{IPolicyForHTTPS}: C{creatorForNetloc(name, port)} gives the
L{UpstreamCreator} for a server name, around what
C{optionsForClientTLS(name, trustRoot=..., extraCertificateOptions=...)}
makes for it, one SSL context per name:

 - SNI is the name (``svc.ns``) whatever address the TCP connection goes
   to, so a pod reached by IP is still asked for, and checked against,
   the Service's name; no SNI for an IP literal;
 - the leaf is checked against the name by L{_verifier}, which fails
   closed on a certificate with no or a malformed subjectAltName, where
   Twisted's own callback (26.10) logs the error and accepts the chain;
 - trust is the system CAs plus every configured certificate plus the CA
   folders' certificates (C{KEDA_HTTP_TLS_CA_DIRS}), each an anchor by
   itself as in Go's C{RootCAs} (C{PARTIAL_CHAIN});
 - a dial without a server name is refused (L{MissingServerName});
 - ALPN offers ``h2`` then ``http/1.1`` (L{OFFERED}); the connection
   speaks what the upstream picks (L{keda_proxy.upstream._alpn}).  Requests
   that must stay on HTTP/1.1 (upgrades) dial with L{UpstreamTLS.creator_http1},
   which offers ``http/1.1`` alone.

Memory: a cached name holds its own SSL context.  The trust anchors are
parsed once and shared by every context (an entry in each trust store,
not a copy), so with the 144 certificates of Debian's CA bundle a name
costs about 70 KiB of RSS, handshake done (``benchmarks/bench_tls_names.py``:
200 names, +13.9 MiB); C{platformTrust()} would parse the bundle into
every context, about 870 KiB a name.  L{CREATOR_CACHE_SIZE} bounds the
cache at 256 names, about 18 MiB, an eighth of the 128 MiB memory request
the chart sets; rebuilding an evicted name costs under a millisecond.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Optional

from OpenSSL import SSL
from OpenSSL.crypto import X509, X509StoreFlags
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from keda_proxy._tls import (
    ALPN,
    ALPN_H2,
    CIPHERS_VAR,
    PEM_CERTIFICATE_BLOCK,
    SKIP_VERIFY_VAR,
    CertificatePair,
    TLSConfigError,
    TLSMaterial,
    TLSPolicy,
    load_ca_dirs,
    ssl_reason,
)

_log = Logger()

#: Server names L{UpstreamTLS} keeps a creator (and its SSL context) for,
#: the most recently dialled: about 18 MiB at 70 KiB a name.
CREATOR_CACHE_SIZE = 256


class MissingServerName(ValueError):
    """A TLS dial was asked for without a server name: refused (fail closed)."""


# ---------------------------------------------------------------------------
# The system CAs

#: The OPENSSLDIR of the OpenSSL in cryptography's wheels, where there are
#: no certificates; pyOpenSSL then looks in these usual places instead.
_WHEEL_OPENSSLDIR = "/opt/pyca/cryptography/openssl"
_FALLBACK_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
)
_FALLBACK_FOLDERS = ("/etc/ssl/certs",)


def _openssldir() -> Optional[str]:
    found = re.search(rb'"(.*)"', SSL.OpenSSL_version(SSL.OPENSSL_DIR))
    return found.group(1).decode("utf-8", "replace") if found else None


def system_trust_locations() -> tuple:
    """C{(files, folders)}: where C{Context.set_default_verify_paths}, what
    Twisted's C{platformTrust()} calls, finds the system CAs.

    C{SSL_CERT_FILE} and C{SSL_CERT_DIR}, each else OpenSSL's compiled-in
    C{OPENSSLDIR/cert.pem} and C{OPENSSLDIR/certs}; with neither variable
    set and the wheel's OpenSSL, also the first existing file and folder
    of the places pyOpenSSL falls back to."""
    home = _openssldir()
    file = os.environ.get("SSL_CERT_FILE")
    folder = os.environ.get("SSL_CERT_DIR")
    files = [file if file is not None else home and os.path.join(home, "cert.pem")]
    folders = [folder if folder is not None else home and os.path.join(home, "certs")]
    if file is None and folder is None and home == _WHEEL_OPENSSLDIR:
        files.append(next((f for f in _FALLBACK_FILES if os.path.isfile(f)), None))
        folders.append(next((d for d in _FALLBACK_FOLDERS if os.path.isdir(d)), None))
    return tuple(f for f in files if f), tuple(d for d in folders if d)


def _ca_file(path: str) -> list:
    """The certificates of a CA file, parsed by OpenSSL as it parses its
    own (cryptography refuses some system roots); like OpenSSL, nothing
    from a file that cannot be read or holds a block that does not parse."""
    try:
        with open(path, "rb") as f:
            blocks = PEM_CERTIFICATE_BLOCK.findall(f.read())
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception:  # noqa: BLE001 - OpenSSL ignores such a file too
        return []


# ---------------------------------------------------------------------------
# Connections


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _verifier(tlsProtocol, name: str, is_ip: bool):
    """The verify callback for one connection: OpenSSL's chain verdict,
    then, at the leaf, C{name} against the certificate's SANs.  Any failure
    of the name check fails the handshake, a certificate with no SAN or a
    malformed one included."""

    def verify(conn, cert, errno, depth, ok) -> bool:
        if depth != 0 or not ok:
            return bool(ok)  # chain errors: OpenSSL fails the handshake
        # Never let an exception escape into OpenSSL: fail closed.
        try:
            leaf = cert.to_cryptography()
            if is_ip:
                verify_certificate_ip_address(leaf, name)
            else:
                verify_certificate_hostname(leaf, name)
            return True
        except Exception as e:
            if not isinstance(e, VerificationError):
                e = VerificationError(f"cannot verify {name!r}: {e}")
            # Report the name mismatch, not just "handshake failed".
            tlsProtocol.failVerification(Failure(e))
            return False

    return verify


def _unchecked(conn, cert, errno, depth, ok) -> bool:
    """OpenSSL's verdict, which C{VERIFY_NONE} ignores: no check at all."""
    return bool(ok)


@implementer(IOpenSSLClientConnectionCreator)
class UpstreamCreator:
    """Client connections for one server name, made by C{options} (what
    C{optionsForClientTLS} made for the name, on C{context}), which sends
    the name as SNI.  Each connection gets what Twisted has no argument
    for: renegotiation off, and L{_verifier} in place of Twisted's check,
    or no verification at all when C{verify} is false.
    """

    def __init__(
        self,
        options: IOpenSSLClientConnectionCreator,
        context: SSL.Context,
        server_name: str,
        verify: bool,
    ) -> None:
        self.options = options
        self.context = context
        self.server_name = server_name
        self.verify = verify
        self._is_ip = _is_ip(server_name)

    def __repr__(self) -> str:
        return f"<UpstreamCreator {self.server_name!r} verify={self.verify}>"

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        conn = self.options.clientConnectionForTLS(tlsProtocol)
        conn.set_options(SSL.OP_NO_RENEGOTIATION)
        if self.verify:
            conn.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                _verifier(tlsProtocol, self.server_name, self._is_ip),
            )
        else:
            # With a callback: without one OpenSSL keeps calling Twisted's,
            # which pyOpenSSL has just released.
            conn.set_verify(SSL.VERIFY_NONE, _unchecked)
        return conn


def _client_certificate(pair: CertificatePair) -> dict:
    """L{CertificateOptions} arguments presenting C{pair} to an upstream
    that asks for a client certificate: the leaf, its key, the chain.

    Not C{optionsForClientTLS}'s C{clientCertificate}: that takes no chain,
    and hands pyOpenSSL its own X509 and PKey, which pyOpenSSL deprecates
    there.  The key is the one read with the certificate (L{load_pair})."""
    return {
        "privateKey": pair.key,
        "certificate": pair.leaf,
        "extraCertChain": list(pair.chain[1:]),
    }


#: What a TLS upstream is offered by ALPN, as Go's transport offers it:
#: HTTP/2 first (L{keda_proxy.upstream._alpn} follows the choice).
OFFERED = [ALPN_H2, ALPN]

#: What the first connection of a new context is made for (see
#: L{UpstreamTLS._creator}): no application protocol of its own.
_NO_PROTOCOL = Factory.forProtocol(Protocol)


@implementer(IPolicyForHTTPS)
class UpstreamTLS:
    """TLS towards upstreams: C{creatorForNetloc(server_name, port)} gives
    the L{UpstreamCreator} for that name, whatever the port.

    Every name gets C{optionsForClientTLS} with the same arguments: the
    policy's versions and TLS 1.2 suites, ALPN ``h2`` then ``http/1.1``
    (L{creator_http1}: ``http/1.1`` alone), OpenSSL's
    default chain depth, the main certificate as client certificate, and
    one trust root, built once: the system CAs (read from where
    L{system_trust_locations} says, the file parsed here and each folder
    looked up by each context as OpenSSL does), every certificate of the
    main and store files, and C{ca_certs} (the CA folders').  Skipping
    verification, the trust root is empty.

    A creator is built the first time its name is asked for and then taken
    from an LRU cache of C{cache_size} names (see L{CREATOR_CACHE_SIZE}),
    so a dial costs a dict lookup; names come and go with the routes, and
    the cache must not keep every name the process ever dialled.
    """

    def __init__(
        self,
        policy: TLSPolicy,
        material: TLSMaterial,
        verify: bool = True,
        cache_size: int = CREATOR_CACHE_SIZE,
        ca_certs: Iterable = (),
    ) -> None:
        self.policy = policy
        self.verify = verify
        self.cache_size = cache_size
        extra = policy.certificate_options()
        extra["verifyDepth"] = None  # OpenSSL's default chain depth, not Twisted's 9
        if material.main is not None:
            extra.update(_client_certificate(material.main))
        self._extra = extra
        anchors: dict = {}
        self._trust_folders: tuple = ()
        if verify:
            files, self._trust_folders = system_trust_locations()
            configured = [c for pair in material.pairs for c in pair.chain]
            found = [c for path in files for c in _ca_file(path)]
            found += [Certificate(X509.from_cryptography(c)) for c in configured]
            found += [Certificate(X509.from_cryptography(c)) for c in ca_certs]
            anchors = {cert.dump(): cert for cert in found}
        self._trust_root = trustRootFromCertificates(list(anchors.values()))
        self._creators: OrderedDict = OrderedDict()
        self._http1_creators: OrderedDict = OrderedDict()
        # Every name gets the same settings: one that cannot be used stops
        # startup here rather than failing each dial.
        try:
            self._creator("localhost")
        except ValueError as e:  # no usable cipher suite
            raise TLSConfigError(f"{CIPHERS_VAR}: {e}") from None
        except SSL.Error as e:
            raise TLSConfigError(f"upstream TLS: {ssl_reason(e)}") from None

    @classmethod
    def from_config(
        cls, config, log: Optional[Logger] = None, cache_size: int = CREATOR_CACHE_SIZE
    ) -> "UpstreamTLS":
        """Trust the system CAs, the main and store certificates and the
        CA folders' certificates; present the main certificate if an
        upstream asks for a client certificate.

        @raise TLSConfigError: a file or setting cannot be used.
        """
        log = _log if log is None else log
        ca_certs = load_ca_dirs(config.tls_ca_dirs)
        upstream = cls(
            TLSPolicy.from_config(config),
            TLSMaterial.from_config(config),
            verify=not config.tls_skip_verify,
            cache_size=cache_size,
            ca_certs=ca_certs,
        )
        if ca_certs:
            log.info(
                "Upstream TLS trusts {count} CA certificate(s) from {folders}",
                count=len(ca_certs),
                folders=", ".join(config.tls_ca_dirs),
            )
        if config.tls_skip_verify:
            log.warn(f"{SKIP_VERIFY_VAR} is true: upstream TLS certificates are NOT verified")
        return upstream

    def creatorForNetloc(self, hostname, port: int) -> UpstreamCreator:
        """The creator for C{hostname} (``svc.ns``, as L{bytes} or, as the
        routes hold it, L{str}), whatever the port; it offers ``h2`` and
        ``http/1.1`` (L{OFFERED}).

        @raise MissingServerName: C{hostname} is empty or None; a TLS dial
            without an explicit upstream identity is refused.
        """
        return self._cached(hostname, self._creators, OFFERED)

    def creator_http1(self, hostname) -> UpstreamCreator:
        """As L{creatorForNetloc}, offering ``http/1.1`` alone: for the
        requests that must stay on HTTP/1.1 (an upgrade, a WebSocket).
        These creators have their own cache, of the same size."""
        return self._cached(hostname, self._http1_creators, [ALPN])

    def _cached(self, hostname, creators: OrderedDict, protocols) -> UpstreamCreator:
        """The creator for C{hostname} in C{creators}, made (offering
        C{protocols}) and kept if it is not there; the least recently used
        beyond L{cache_size} is dropped."""
        if isinstance(hostname, bytes):  # the cache is keyed on text
            hostname = hostname.decode("ascii")
        creator = creators.get(hostname)
        if creator is not None:
            creators.move_to_end(hostname)
            return creator
        if not hostname:
            raise MissingServerName("refusing a TLS dial without a server name (SNI)")
        creator = creators[hostname] = self._creator(hostname, protocols)
        if len(creators) > self.cache_size:
            creators.popitem(last=False)
        return creator

    def _creator(self, server_name: str, protocols=OFFERED) -> UpstreamCreator:
        """A new creator for C{server_name}, its context finished.

        Twisted hands out the context it builds only through a connection
        made from it (C{Connection.get_context}), and OpenSSL copies the
        key-exchange groups into each connection as it is made; so a first
        connection is made here, never used, before the groups are set,
        with the trust store's folders and C{PARTIAL_CHAIN}."""
        options = optionsForClientTLS(
            server_name,
            trustRoot=self._trust_root,
            acceptableProtocols=protocols,
            extraCertificateOptions=dict(self._extra),
        )
        first = TLSMemoryBIOFactory(options, True, _NO_PROTOCOL).buildProtocol(None)
        context = options.clientConnectionForTLS(first).get_context()
        self.policy.apply_groups(context)
        if self.verify:
            store = context.get_cert_store()
            for folder in self._trust_folders:
                store.load_locations(None, folder)
            store.set_flags(X509StoreFlags.PARTIAL_CHAIN)
        return UpstreamCreator(options, context, server_name, self.verify)
