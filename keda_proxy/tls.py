# -*- test-case-name: tests.test_tls -*-
"""
TLS for the proxy listener and for upstream connections.

Behaviour follows the Go interceptor (``interceptor/tls_config.go`` and
``interceptor/proxy.go``); the code is our own, on pyOpenSSL.

L{ServerTLS} is the TLS proxy listener's side:

 - it loads the main certificate (C{KEDA_HTTP_PROXY_TLS_CERT_PATH} /
   C{KEDA_HTTP_PROXY_TLS_KEY_PATH}) and every certificate/key pair found
   under the folders of C{KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS}
   (``X.crt`` + ``X.key`` or ``X.pem`` + ``X-key.pem``, as Go pairs them);
 - it picks the certificate by SNI: an exact SAN match, then a wildcard
   SAN (``*.example.com`` for ``a.example.com``), then the main
   certificate; with no main certificate and no match the handshake fails;
 - it advertises ALPN ``http/1.1`` only: requests are forwarded with an
   HTTP/1.1 client, and the Go interceptor's h2 listener is not offered.

L{UpstreamTLS} is the forwarding side, used when the request arrived on the
TLS listener.  It is an L{IPolicyForHTTPS}: C{creatorForNetloc(name, port)}
hands out one creator per server name, from a bounded LRU cache, all on one
client context that Twisted's L{CertificateOptions} builds.  The creator
sends that name as SNI and verifies the peer certificate against it
(service_identity), whatever address the TCP connection went to, so a pod
reached by IP is still checked against ``svc.ns``.  Trust is the system
CAs plus every configured certificate (as Go adds them to C{RootCAs}) plus
the CA certificates of the folders in C{KEDA_HTTP_TLS_CA_DIRS}.  A dial
without a server name is refused.

Both sides share one L{TLSPolicy}: minimum and maximum TLS version, TLS 1.2
cipher suites and key-exchange groups (``KEDA_HTTP_TLS_*``, or the
deprecated ``KEDA_HTTP_PROXY_TLS_*`` names: L{keda_proxy.config} resolves
which one is in effect), as v0.16 applies one policy to its serving and its
outbound C{tls.Config}.

Nothing here is global: the entry point builds both objects from the
L{keda_proxy.config.Config} and hands them to the listener and to
L{keda_proxy.upstream.UpstreamEndpoints}.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Optional

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from OpenSSL.crypto import X509, X509StoreFlags
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from keda_proxy.config import GO_CIPHER_SUITES, GO_CURVES

_log = Logger()

CERT_PATH_VAR = "KEDA_HTTP_PROXY_TLS_CERT_PATH"
KEY_PATH_VAR = "KEDA_HTTP_PROXY_TLS_KEY_PATH"
STORE_VAR = "KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS"
CIPHERS_VAR = "KEDA_HTTP_TLS_CIPHER_SUITES"
CURVES_VAR = "KEDA_HTTP_TLS_CURVE_PREFERENCES"
MAX_VERSION_VAR = "KEDA_HTTP_TLS_MAX_VERSION"
SKIP_VERIFY_VAR = "KEDA_HTTP_TLS_SKIP_VERIFY"
CA_DIRS_VAR = "KEDA_HTTP_TLS_CA_DIRS"

#: The only application protocol offered, on both sides.
ALPN = b"http/1.1"

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_TWISTED_VERSIONS = {
    SSL.TLS1_2_VERSION: TLSVersion.TLSv1_2,
    SSL.TLS1_3_VERSION: TLSVersion.TLSv1_3,
}

#: TLS 1.3 suites: Go accepts their names but, like OpenSSL's cipher list,
#: never restricts TLS 1.3 with them; all three stay enabled.
_TLS13_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)

#: Go's default TLS 1.2 suites (ECDHE only: no RSA key exchange, no 3DES),
#: AEADs first; used when KEDA_HTTP_TLS_CIPHER_SUITES is empty.
DEFAULT_TLS12_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
)

def _cipher_string(go_names: Iterable[str]) -> bytes:
    return ":".join(GO_CIPHER_SUITES[n] for n in go_names).encode("ascii")


_NIST_CURVES = {
    "prime256v1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
}


class TLSConfigError(Exception):
    """TLS material or settings that cannot be used; C{str()} is one line
    naming the variable and the file, and startup stops with it."""


class MissingServerName(ValueError):
    """A TLS dial was asked for without a server name: refused (fail closed)."""


def _ssl_reason(error: Exception) -> str:
    """One line out of an L{SSL.Error}'s list of (lib, func, reason)."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(str(entry[-1]) for entry in args[0])
    return str(error) or error.__class__.__name__


# ---------------------------------------------------------------------------
# Versions, ciphers, groups


def _groups_setter():
    """The binding of C{SSL_CTX_set1_groups_list} (alias ``curves_list``)
    shipped with pyOpenSSL, or None.  pyOpenSSL has no public call for a
    group list; without this we fall back to C{set_tmp_ecdh} (one NIST
    curve)."""
    try:
        from OpenSSL._util import lib
    except ImportError:  # pragma: no cover - depends on pyOpenSSL internals
        return None
    setter = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setter is None:  # pragma: no cover
        return None
    clear = getattr(lib, "ERR_clear_error", lambda: None)

    def set_groups(ctx: SSL.Context, groups: bytes) -> bool:
        ok = setter(ctx._context, groups) == 1
        if not ok:
            clear()
        return ok

    return set_groups


_set_groups = _groups_setter()

#: The OpenSSL pyOpenSSL runs on (cryptography's bundled one, not
#: necessarily the system's ``openssl`` command), for messages.
OPENSSL_VERSION = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")


def group_supported(group: str) -> bool:
    """Whether the OpenSSL in use accepts the key-exchange group C{group}
    (an OpenSSL name such as ``X25519MLKEM768``), tried on a throwaway
    context.  Without the group-list binding only the NIST curves can be
    pinned (L{TLSPolicy} falls back to C{set_tmp_ecdh})."""
    if _set_groups is None:
        return group in _NIST_CURVES
    return _set_groups(SSL.Context(SSL.TLS_METHOD), group.encode("ascii"))


@frozen
class TLSPolicy:
    """What both sides negotiate: versions, TLS 1.2 suites, groups.

    C{cipher_list} is an OpenSSL cipher string that only affects TLS 1.2;
    C{groups} is an OpenSSL group list (C{"X25519:prime256v1"}) or None for
    OpenSSL's defaults.
    """

    min_version: int = SSL.TLS1_2_VERSION
    max_version: Optional[int] = None
    cipher_list: bytes = _cipher_string(DEFAULT_TLS12_SUITES)
    groups: Optional[bytes] = None

    @classmethod
    def from_config(cls, config) -> "TLSPolicy":
        low = _VERSIONS[config.tls_min_version or "1.2"]
        high = _VERSIONS.get(config.tls_max_version)
        names = tuple(config.tls_cipher_suites)
        tls12 = [n for n in names if n not in _TLS13_SUITES]
        if names and not tls12:
            # Go: no TLS 1.2 suite left, so only TLS 1.3 can succeed.
            if high == SSL.TLS1_2_VERSION:
                raise TLSConfigError(
                    f"{CIPHERS_VAR}: only TLS 1.3 suites are listed but "
                    f"{MAX_VERSION_VAR} is 1.2"
                )
            low = SSL.TLS1_3_VERSION
        cipher_list = _cipher_string(tls12 or DEFAULT_TLS12_SUITES)
        groups = None
        if config.tls_curve_preferences:
            ordered = dict.fromkeys(GO_CURVES[n] for n in config.tls_curve_preferences)
            groups = ":".join(ordered).encode("ascii")
        return cls(low, high, cipher_list, groups)

    def certificate_options(self) -> dict:
        """The versions and TLS 1.2 suites as L{CertificateOptions}
        arguments (the upstream side); L{finish_context} does the rest."""
        high = self.max_version
        return {
            "raiseMinimumTo": _TWISTED_VERSIONS[self.min_version],
            "lowerMaximumSecurityTo": None if high is None else _TWISTED_VERSIONS[high],
            "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(
                self.cipher_list.decode("ascii")
            ),
        }

    def finish_context(self, ctx: SSL.Context) -> None:
        """What L{CertificateOptions} has no argument for: renegotiation
        off and the key-exchange groups (compression is already off)."""
        ctx.set_options(SSL.OP_NO_RENEGOTIATION)
        if self.groups is not None:
            self._apply_groups(ctx)

    def apply(self, ctx: SSL.Context) -> None:
        """Configure a fresh context (before any connection uses it)."""
        ctx.set_min_proto_version(self.min_version)
        if self.max_version is not None:
            ctx.set_max_proto_version(self.max_version)
        try:
            ctx.set_cipher_list(self.cipher_list)
        except SSL.Error as e:
            raise TLSConfigError(
                f"{CIPHERS_VAR}: no usable cipher suite ({_ssl_reason(e)})"
            ) from None
        if self.groups is not None:
            self._apply_groups(ctx)

    def _apply_groups(self, ctx: SSL.Context) -> None:
        names = self.groups.decode("ascii")
        if _set_groups is not None:
            if not _set_groups(ctx, self.groups):
                raise TLSConfigError(
                    f"{CURVES_VAR}: OpenSSL rejected the group list {names!r}"
                )
            return
        nist = [n for n in names.split(":") if n in _NIST_CURVES]
        if not nist:
            raise TLSConfigError(
                f"{CURVES_VAR}: {names!r} needs a pyOpenSSL that can set a group "
                "list; only a single NIST curve can be pinned here"
            )
        ctx.set_tmp_ecdh(_NIST_CURVES[nist[0]]())


def _base_context(method: int, policy: TLSPolicy) -> SSL.Context:
    ctx = SSL.Context(method)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    policy.apply(ctx)
    return ctx


# ---------------------------------------------------------------------------
# Certificates on disk


@frozen
class CertificatePair:
    """A certificate file (leaf first, then its chain) and its key file,
    with the names (DNS, IP and URI SANs) SNI can select it by."""

    cert_path: str
    key_path: str
    chain: tuple
    names: tuple

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _read(path: str, var: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(
            f"{var}: cannot read {what} {path}: {e.strerror or e}"
        ) from None


def _san_names(cert: x509.Certificate) -> tuple:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    names += list(san.get_values_for_type(x509.UniformResourceIdentifier))
    return tuple(dict.fromkeys(names))


def load_pair(
    cert_path: str, key_path: str, cert_var: str, key_var: Optional[str] = None
) -> CertificatePair:
    """Read and check one certificate/key pair; L{TLSConfigError} names the
    variable (C{key_var} for the key, default C{cert_var}) and the file."""
    key_var = key_var or cert_var
    data = _read(cert_path, cert_var, "certificate")
    _read(key_path, key_var, "key")
    try:
        chain = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise TLSConfigError(f"{cert_var}: no PEM certificate in {cert_path}") from None
    pair = CertificatePair(cert_path, key_path, chain, _san_names(chain[0]))
    # Loading into a throwaway context checks the key and that they match.
    _use_pair(SSL.Context(SSL.TLS_SERVER_METHOD), pair, cert_var, key_var)
    return pair


def _use_pair(
    ctx: SSL.Context, pair: CertificatePair, cert_var: str, key_var: Optional[str] = None
) -> None:
    try:
        ctx.use_certificate_chain_file(pair.cert_path)
    except SSL.Error as e:
        raise TLSConfigError(
            f"{cert_var}: cannot load certificate {pair.cert_path}: {_ssl_reason(e)}"
        ) from None
    try:
        ctx.use_privatekey_file(pair.key_path)
        ctx.check_privatekey()
    except SSL.Error as e:
        raise TLSConfigError(
            f"{key_var or cert_var}: cannot use key {pair.key_path} with "
            f"{pair.cert_path}: {_ssl_reason(e)}"
        ) from None


def _walk_store(folder: str) -> Iterable[str]:
    def fail(e: OSError) -> None:
        raise TLSConfigError(
            f"{STORE_VAR}: cannot walk {e.filename or folder}: {e.strerror or e}"
        )

    if not os.path.exists(folder):
        fail(FileNotFoundError(2, "No such file or directory", folder))
    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(root, name)


def load_store(folders: Iterable[str]) -> list:
    """Every certificate/key pair under C{folders}, walked recursively.

    Pairing is by path stem, as in Go: ``X-key.pem`` and ``X.key`` are keys
    of ``X``; ``X.pem`` and ``X.crt`` are certificates of ``X``.  A
    certificate without a key stops startup; a key without a certificate
    is ignored.
    """
    certs: dict = {}
    keys: dict = {}
    for folder in folders:
        for path in _walk_store(folder):
            if path.endswith("-key.pem"):
                keys[path[: -len("-key.pem")]] = path
            elif path.endswith(".pem") or path.endswith(".crt"):
                certs[path[:-4]] = path
            elif path.endswith(".key"):
                keys[path[:-4]] = path
    pairs = []
    for stem, cert_path in sorted(certs.items()):
        key_path = keys.get(stem)
        if key_path is None:
            raise TLSConfigError(
                f"{STORE_VAR}: no key found for certificate {cert_path} "
                f"(expected {stem}.key or {stem}-key.pem)"
            )
        pairs.append(load_pair(cert_path, key_path, STORE_VAR))
    return pairs


@frozen
class TLSMaterial:
    """The main pair (or None when either path is empty, as in Go) and the
    store pairs, in load order."""

    main: Optional[CertificatePair]
    store: tuple

    @classmethod
    def from_config(cls, config) -> "TLSMaterial":
        main = None
        if config.tls_cert_path and config.tls_key_path:
            main = load_pair(
                config.tls_cert_path, config.tls_key_path, CERT_PATH_VAR, KEY_PATH_VAR
            )
        return cls(main, tuple(load_store(config.tls_cert_store_paths)))

    @property
    def pairs(self) -> tuple:
        return ((self.main,) if self.main else ()) + self.store


# ---------------------------------------------------------------------------
# CA folders (KEDA_HTTP_TLS_CA_DIRS)

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


def pem_certificates(data: bytes) -> list:
    """The certificates of the PEM ``CERTIFICATE`` blocks in C{data}, taken
    as Go's C{CertPool.AppendCertsFromPEM} takes them: other blocks (keys)
    and text around them are ignored, and so is a block that does not
    parse."""
    found = []
    for block in _PEM_CERTIFICATE.findall(data):
        try:
            found.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return found


def ca_dir_certificates(folders: Iterable[str]) -> tuple:
    """The CA certificates in C{folders}, read as v0.16 reads
    C{KEDA_HTTP_TLS_CA_DIRS}.

    Every entry of each folder is read, whatever its name, except
    sub-folders (not descended into) and names starting with ``..``: the
    ``..data`` link and ``..<timestamp>`` folder of a Kubernetes ConfigMap
    or Secret volume.  Symlinked files are followed, so the volume's
    ``ca.crt -> ..data/ca.crt`` is read.  Every file read must hold at least
    one PEM certificate, and the folders together at least one.

    @raise ValueError: one line naming the folder or file at fault.
    """
    folders = tuple(folders)
    found = []
    for folder in folders:
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as e:
            raise ValueError(f"cannot read CA folder {folder}: {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("..") or entry.is_dir(follow_symlinks=False):
                continue
            try:
                with open(entry.path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ValueError(
                    f"cannot read CA file {entry.path}: {e.strerror or e}"
                ) from None
            certificates = pem_certificates(data)
            if not certificates:
                raise ValueError(f"no PEM certificate in {entry.path}")
            found.extend(certificates)
    if folders and not found:
        raise ValueError(f"no CA certificate found in {', '.join(folders)}")
    return tuple(found)


def load_ca_dirs(folders: Iterable[str]) -> tuple:
    """L{ca_dir_certificates}, failing with a L{TLSConfigError} that names
    C{KEDA_HTTP_TLS_CA_DIRS}."""
    try:
        return ca_dir_certificates(folders)
    except ValueError as e:
        raise TLSConfigError(f"{CA_DIRS_VAR}: {e}") from None


# ---------------------------------------------------------------------------
# The listener


def _select_alpn(conn: SSL.Connection, offered: list) -> bytes:
    return ALPN if ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _server_context(
    policy: TLSPolicy, pair: Optional[CertificatePair], var: str = CERT_PATH_VAR
) -> SSL.Context:
    ctx = _base_context(SSL.TLS_SERVER_METHOD, policy)
    ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_id(b"keda-interceptor")
    ctx.set_alpn_select_callback(_select_alpn)
    if pair is not None:
        _use_pair(ctx, pair, var, KEY_PATH_VAR if var == CERT_PATH_VAR else var)
    return ctx


def sni_lookup(table: Mapping, server_name: Optional[str]):
    """C{table[name]} for the exact name, else for its wildcard
    (``*.rest``, one leftmost label), else None."""
    if not server_name:
        return None
    name = server_name.lower().rstrip(".")
    found = table.get(name)
    if found is None and "." in name:
        found = table.get("*." + name.split(".", 1)[1])
    return found


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The TLS proxy listener's connection creator.

    Every certificate gets its own context, all configured alike (policy,
    ALPN); the first context holds the main certificate (or none) and
    switches a connection to the SNI-selected one during the handshake.
    Contexts are built once, at startup.
    """

    def __init__(self, policy: TLSPolicy, material: TLSMaterial) -> None:
        self.policy = policy
        self.material = material
        self._default = _server_context(policy, material.main)
        self._default.set_tlsext_servername_callback(self._switch)
        self._by_name: dict = {}
        for pair in material.pairs:  # store pairs override the main one
            if pair is material.main:
                ctx = self._default
            else:
                ctx = _server_context(policy, pair, STORE_VAR)
            for name in pair.names:
                self._by_name[name] = (pair, ctx)

    @classmethod
    def from_config(cls, config, log: Optional[Logger] = None) -> "ServerTLS":
        """@raise TLSConfigError: a file or setting cannot be used."""
        log = _log if log is None else log
        material = TLSMaterial.from_config(config)
        for pair in material.pairs:
            log.info(
                "TLS certificate {path} serves {names}",
                path=pair.cert_path,
                names=", ".join(pair.names) or "(no SANs)",
            )
        return cls(TLSPolicy.from_config(config), material)

    @property
    def names(self) -> tuple:
        """The SNI names with a dedicated certificate, sorted."""
        return tuple(sorted(self._by_name))

    def certificate_for(self, server_name: Optional[str]) -> Optional[CertificatePair]:
        """The pair a handshake with this SNI gets; None means failure."""
        found = sni_lookup(self._by_name, server_name)
        return found[0] if found else self.material.main

    def _switch(self, conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        found = sni_lookup(self._by_name, raw.decode("ascii", "replace") if raw else None)
        if found is not None:
            conn.set_context(found[1])
        # Otherwise stay on the default context: the main certificate, or
        # no certificate at all, which fails the handshake.

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._default, None)

    def endpoint(self, reactor, port: int, interface: str = "") -> SSL4ServerEndpoint:
        """An L{IStreamServerEndpoint} for the TLS proxy port; listen on it
        with the proxy L{Site}."""
        return SSL4ServerEndpoint(reactor, port, self, interface=interface)


# ---------------------------------------------------------------------------
# Upstreams


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


@implementer(IOpenSSLClientConnectionCreator)
class UpstreamCreator:
    """Client connections for one server name: SNI is that name (not sent
    for an IP literal), and unless C{verify} is false the peer certificate
    must chain to the trust store and match the name.

    The connections come from C{options}, the L{CertificateOptions} that
    L{UpstreamTLS} shares between all names.
    """

    def __init__(self, options: CertificateOptions, server_name: str, verify: bool) -> None:
        self.options = options
        self.server_name = server_name
        self.verify = verify
        self._is_ip = _is_ip(server_name)
        self._sni = None if self._is_ip else server_name.encode("idna")

    def __repr__(self) -> str:
        return f"<UpstreamCreator {self.server_name!r} verify={self.verify}>"

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        conn = self.options.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        if self.verify:
            conn.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                _verifier(tlsProtocol, self.server_name, self._is_ip),
            )
        return conn


#: Server names L{UpstreamTLS} keeps a creator for.
CREATOR_CACHE_SIZE = 1024


def _client_certificate(pair: CertificatePair) -> dict:
    """L{CertificateOptions} arguments presenting C{pair} to an upstream
    that asks for a client certificate: the leaf, its key, the chain.

    They are cryptography objects: L{CertificateOptions} hands them to
    pyOpenSSL as they are, and pyOpenSSL deprecates its own X509 and PKey
    there."""
    key = _read(pair.key_path, KEY_PATH_VAR, "key")
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:  # the pair was checked when loaded
        raise TLSConfigError(
            f"{KEY_PATH_VAR}: cannot use key {pair.key_path} with {pair.cert_path}: {e}"
        ) from None
    return {
        "privateKey": private_key,
        "certificate": pair.leaf,
        "extraCertChain": list(pair.chain[1:]),
    }


@implementer(IPolicyForHTTPS)
class UpstreamTLS:
    """TLS towards upstreams: C{creatorForNetloc(server_name, port)} gives
    the L{UpstreamCreator} for that name.

    Every name shares one L{CertificateOptions}, hence one client context,
    built at startup: the policy's versions and TLS 1.2 suites, ALPN
    ``http/1.1``, the main certificate as client certificate; then
    L{TLSPolicy.finish_context} and the trust store are added to its
    context before any connection uses it.  Trust is OpenSSL's default
    verify paths (the system CAs, as Twisted's C{platformTrust()} loads
    them) plus every certificate of the main and store files and
    C{ca_certs} (the CA folders' certificates), each an anchor by itself as
    in Go's C{RootCAs}, even a leaf or an intermediate (C{PARTIAL_CHAIN}).
    Verification is left to each connection (see L{UpstreamCreator}).

    The creators are not Twisted's C{optionsForClientTLS}: that builds a
    context, with its own copy of the system CAs, per name; trusting the
    system CAs and further certificates together would take implementing
    Twisted's private C{IOpenSSLTrustRoot}; and its verify callback lets a
    certificate through when service_identity raises anything other than
    L{VerificationError} (no SAN, a malformed SAN), where ours fails.

    A creator is built the first time its name is asked for and then
    taken from a cache, so a dial costs a dict lookup.  The cache is an
    LRU of C{cache_size} names (1,024 by default): names come and go with
    the routes (Services created, renamed, deleted), and the cache must
    not keep every name the process ever dialled.  The bound is far above
    the number of Services a routing table holds, so a name in use is
    never rebuilt; the least recently used name is dropped first, and
    rebuilding one costs a small object.

    The port is not part of the identity: one creator serves a name on any
    port.
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
        kw = policy.certificate_options()
        if material.main is not None:
            kw.update(_client_certificate(material.main))
        try:
            # verifyDepth=None: OpenSSL's default chain depth, not Twisted's 9
            self.options = CertificateOptions(
                acceptableProtocols=[ALPN], verifyDepth=None, **kw
            )
        except ValueError as e:  # no usable cipher suite
            raise TLSConfigError(f"{CIPHERS_VAR}: {e}") from None
        try:
            ctx = self.options.getContext()
        except SSL.Error as e:
            raise TLSConfigError(f"upstream TLS: {_ssl_reason(e)}") from None
        policy.finish_context(ctx)
        ctx.set_default_verify_paths()  # what platformTrust() does
        store = ctx.get_cert_store()
        configured = [c for pair in material.pairs for c in pair.chain]
        for cert in dict.fromkeys(configured + list(ca_certs)):
            store.add_cert(X509.from_cryptography(cert))
        store.set_flags(X509StoreFlags.PARTIAL_CHAIN)
        self._creators: OrderedDict = OrderedDict()

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
        routes hold it, L{str}), whatever the port.

        @raise MissingServerName: C{hostname} is empty or None; a TLS dial
            without an explicit upstream identity is refused.
        """
        creators = self._creators
        creator = creators.get(hostname)
        if creator is None:
            return self._build(hostname)
        creators.move_to_end(hostname)
        return creator

    def _build(self, hostname) -> UpstreamCreator:
        if isinstance(hostname, bytes):  # the cache is keyed on text
            return self.creatorForNetloc(hostname.decode("ascii"), 0)
        if not hostname:
            raise MissingServerName("refusing a TLS dial without a server name (SNI)")
        creators = self._creators
        creator = creators[hostname] = UpstreamCreator(self.options, hostname, self.verify)
        if len(creators) > self.cache_size:
            creators.popitem(last=False)
        return creator
