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
 - it picks up certificates rotated on disk without a restart: a stat of
   every file every L{RELOAD_INTERVAL} seconds, and what changed is read
   whole and served to new handshakes, while a file that cannot be used
   keeps the previous certificate served and is logged once
   (L{ServerTLS.reload}, run by L{CertificateWatcher});
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
deprecated ``KEDA_HTTP_PROXY_TLS_*`` names: L{keda_proxy.ops._config} resolves
which one is in effect), as v0.16 applies one policy to its serving and its
outbound C{tls.Config}.

Nothing here is global: the entry point builds both objects from the
L{keda_proxy.ops._config.Config} and hands them to the listener and to
L{keda_proxy.upstream._dial.UpstreamEndpoints}.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Optional

from attrs import field, frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from OpenSSL.crypto import X509, X509StoreFlags
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.application.service import Service
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from keda_proxy.ops._config import GO_CIPHER_SUITES, GO_CURVES

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
    with the names (DNS, IP and URI SANs) SNI can select it by, and the
    private key as it was read (contexts are built from what was read, not
    by reading the files again)."""

    cert_path: str
    key_path: str
    chain: tuple
    names: tuple
    key: object = field(default=None, eq=False, repr=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def same_material(self, other: Optional["CertificatePair"]) -> bool:
        """Whether C{other} holds the same certificates and key (a file
        touched or rewritten unchanged, a symlink swapped to a copy)."""
        return (
            other is not None
            and self.chain == other.chain
            and _key_der(self.key) == _key_der(other.key)
        )


def _key_der(key) -> Optional[bytes]:
    if key is None:
        return None
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


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


_PEM_CERTIFICATE_START = b"-----BEGIN CERTIFICATE-----"


def load_pair(
    cert_path: str, key_path: str, cert_var: str, key_var: Optional[str] = None
) -> CertificatePair:
    """Read and check one certificate/key pair; L{TLSConfigError} names the
    variable (C{key_var} for the key, default C{cert_var}) and the file.

    Each file is read once.  The certificate file holds the leaf, then its
    chain, as PEM ``CERTIFICATE`` blocks (other blocks and text are
    skipped); a block cut short, as in a file still being written, is an
    error.  The key must be an unencrypted PEM private key matching the
    leaf."""
    key_var = key_var or cert_var
    data = _read(cert_path, cert_var, "certificate")
    key_data = _read(key_path, key_var, "key")
    try:
        chain = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        chain = ()
    if not chain and _PEM_CERTIFICATE_START not in data:
        raise TLSConfigError(f"{cert_var}: no PEM certificate in {cert_path}")
    if data.count(_PEM_CERTIFICATE_START) != len(chain):
        raise TLSConfigError(
            f"{cert_var}: cannot load certificate {cert_path}: a PEM certificate "
            "block is incomplete or invalid"
        )
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        reason = " ".join(str(e).split(". See https://", 1)[0].split())
        reason = reason or e.__class__.__name__
        raise TLSConfigError(
            f"{key_var}: cannot use key {key_path} with {cert_path}: {reason}"
        ) from None
    pair = CertificatePair(cert_path, key_path, chain, _san_names(chain[0]), key)
    # Loading into a throwaway context checks that they match.
    _use_pair(SSL.Context(SSL.TLS_SERVER_METHOD), pair, cert_var, key_var)
    return pair


def _use_pair(
    ctx: SSL.Context, pair: CertificatePair, cert_var: str, key_var: Optional[str] = None
) -> None:
    try:
        ctx.use_certificate(pair.leaf)
        for cert in pair.chain[1:]:
            ctx.add_extra_chain_cert(cert)
    except SSL.Error as e:
        raise TLSConfigError(
            f"{cert_var}: cannot load certificate {pair.cert_path}: {_ssl_reason(e)}"
        ) from None
    try:
        ctx.use_privatekey(pair.key)
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as e:
        reason = _ssl_reason(e) if isinstance(e, SSL.Error) else str(e)
        raise TLSConfigError(
            f"{key_var or cert_var}: cannot use key {pair.key_path} with "
            f"{pair.cert_path}: {reason}"
        ) from None


def _walk_store(folder: str, settling: bool = False) -> Iterable[str]:
    """Every file under C{folder}, sorted, symlinked files included,
    symlinked folders not descended into.

    @param settling: a sub-folder that vanishes during the walk is skipped
        instead of failing (a Kubernetes volume removing its previous
        ``..<timestamp>`` folder while it is being read)."""

    def fail(e: OSError) -> None:
        if settling and e.errno == errno.ENOENT and e.filename not in (None, folder):
            return
        raise TLSConfigError(
            f"{STORE_VAR}: cannot walk {e.filename or folder}: {e.strerror or e}"
        )

    if not os.path.exists(folder):
        fail(FileNotFoundError(2, "No such file or directory", folder))
    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(root, name)


def _store_files(folders: Iterable[str], settling: bool = False) -> list:
    """C{(cert_path, key_path)} for every certificate under C{folders}, in
    stem order; C{key_path} is None for a certificate without a key.

    Pairing is by path stem, as in Go: ``X-key.pem`` and ``X.key`` are keys
    of ``X``; ``X.pem`` and ``X.crt`` are certificates of ``X``."""
    certs: dict = {}
    keys: dict = {}
    for folder in folders:
        for path in _walk_store(folder, settling):
            if path.endswith("-key.pem"):
                keys[path[: -len("-key.pem")]] = path
            elif path.endswith(".pem") or path.endswith(".crt"):
                certs[path[:-4]] = path
            elif path.endswith(".key"):
                keys[path[:-4]] = path
    return [(cert_path, keys.get(stem)) for stem, cert_path in sorted(certs.items())]


def _no_key(cert_path: str) -> TLSConfigError:
    stem = cert_path[:-4]
    return TLSConfigError(
        f"{STORE_VAR}: no key found for certificate {cert_path} "
        f"(expected {stem}.key or {stem}-key.pem)"
    )


def load_store(folders: Iterable[str]) -> list:
    """Every certificate/key pair under C{folders}, walked recursively
    (see L{_store_files} for the pairing).  A certificate without a key
    stops startup; a key without a certificate is ignored.
    """
    pairs = []
    for cert_path, key_path in _store_files(folders):
        if key_path is None:
            raise _no_key(cert_path)
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


#: Seconds between two looks at the certificate files of the TLS listener.
RELOAD_INTERVAL = 2.0


def _stat(path: Optional[str]) -> tuple:
    """What a change of the file at C{path} changes: the device, inode,
    size, modification and change times of the file it resolves to
    (symlinks followed, so a Kubernetes volume's ``..data`` swap shows), or
    the error that stops it from being looked at."""
    if path is None:
        return ()
    try:
        st = os.stat(path)
    except OSError as e:
        return ("error", e.errno)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@frozen
class _Look:
    """The certificate files as one look at them found them: the main
    pair's stats, and each store certificate with its key and their stats
    (or the reason the store folders could not be walked)."""

    main: tuple
    store: tuple
    store_error: Optional[str] = None


@frozen
class _Served:
    """One certificate pair as the listener serves it: its context and the
    stats of its files when they were read."""

    pair: CertificatePair
    ctx: SSL.Context = field(eq=False)
    files: tuple


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The TLS proxy listener's connection creator.

    Every certificate gets its own context, all configured alike (policy,
    ALPN); the default context holds the main certificate (or none) and
    switches a connection to the SNI-selected one during the handshake.

    L{reload} picks up certificates rotated on disk: called every
    L{RELOAD_INTERVAL} seconds by the L{CertificateWatcher} of
    L{watcher}, it compares the stats of the main pair and of the store
    folders' files with those of the previous look and, for what changed,
    reads the new pair whole (certificate, chain, key, their match).
    Contexts are never changed once built: new ones are built and new
    handshakes get them, while connections already made keep theirs.  A
    pair that cannot be used leaves the previous one served (a new store
    certificate is not served until it can be) and is logged once, in one
    line naming the file, until it changes for the better.
    """

    def __init__(
        self,
        policy: TLSPolicy,
        material: TLSMaterial,
        store_paths: Iterable[str] = (),
        log: Optional[Logger] = None,
        look: Optional[_Look] = None,
    ) -> None:
        self.policy = policy
        self.store_paths = tuple(store_paths)
        self._log = _log if log is None else log
        main = material.main
        self._main_paths = (main.cert_path, main.key_path) if main else None
        if look is None:
            look = self._look()
        self._seen = look
        #: the message last logged for each source still failing
        self._failing: dict = {}
        self._main: Optional[_Served] = None
        self._default: Optional[SSL.Context] = None
        served_main = None
        if main is not None:
            served_main = _Served(main, self._context(main, CERT_PATH_VAR), look.main)
        files = {entry[0]: entry[2:] for entry in look.store}
        store = {}
        for pair in material.store:
            ctx = self._context(pair, STORE_VAR)
            store[pair.cert_path] = _Served(pair, ctx, files.get(pair.cert_path, ()))
        self._install(served_main, store)

    @classmethod
    def from_config(cls, config, log: Optional[Logger] = None) -> "ServerTLS":
        """@raise TLSConfigError: a file or setting cannot be used."""
        log = _log if log is None else log
        main_paths = None
        if config.tls_cert_path and config.tls_key_path:
            main_paths = (config.tls_cert_path, config.tls_key_path)
        store_paths = tuple(config.tls_cert_store_paths)
        look = _look(main_paths, store_paths)  # before reading: no change missed
        material = TLSMaterial.from_config(config)
        for pair in material.pairs:
            log.info(
                "TLS certificate {path} serves {names}",
                path=pair.cert_path,
                names=_describe(pair),
            )
        return cls(TLSPolicy.from_config(config), material, store_paths, log, look)

    def watcher(self, clock, interval: float = RELOAD_INTERVAL) -> "CertificateWatcher":
        """A service that calls L{reload} every C{interval} seconds of
        C{clock} while it runs."""
        return CertificateWatcher(self, clock, interval)

    # -- serving

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

    def _context(self, pair: Optional[CertificatePair], var: str) -> SSL.Context:
        return _server_context(self.policy, pair, var)

    def _install(self, main: Optional[_Served], store: dict) -> None:
        """Serve C{main} and C{store} to handshakes from now on.  Only a
        context just built is configured: one that made connections is
        never changed (pyOpenSSL refuses it, and those connections keep
        it)."""
        if self._default is None or (main is not None and main.ctx is not self._default):
            default = main.ctx if main is not None else self._context(None, CERT_PATH_VAR)
            default.set_tlsext_servername_callback(self._switch)
            self._default = default
        by_name: dict = {}
        if main is not None:
            for name in main.pair.names:
                by_name[name] = (main.pair, main.ctx)
        for served in store.values():  # store pairs override the main one
            for name in served.pair.names:
                by_name[name] = (served.pair, served.ctx)
        self._main = main
        self._store = store
        self._by_name = by_name
        self.material = TLSMaterial(
            main.pair if main is not None else None,
            tuple(served.pair for served in store.values()),
        )

    # -- reloading

    def _look(self) -> _Look:
        return _look(self._main_paths, self.store_paths)

    def reload(self) -> bool:
        """Look at the certificate files once and serve what changed.

        Nothing is read when no stat changed.  When the files change while
        they are read, the result is dropped without a word and the next
        look reads them again.

        @return: whether new handshakes now get other certificates.
        """
        before = self._look()
        if before == self._seen:
            return False
        errors: dict = {}
        events: list = []
        main = self._reload_main(before, errors, events)
        store = self._reload_store(before, errors, events)
        if self._look() != before:
            return False  # still being written: next time
        self._seen = before
        for source, (message, kept) in errors.items():
            if self._failing.get(source) != message:
                self._log.error(
                    "TLS certificate reload: {error}; {outcome}",
                    error=message,
                    outcome=(
                        "still serving the previous certificate" if kept else "not served"
                    ),
                )
        self._failing = {source: message for source, (message, _) in errors.items()}
        for text, fields in events:
            self._log.info(text, **fields)
        self._install(main, store)
        return bool(events)

    def _reload_main(self, look: _Look, errors: dict, events: list) -> Optional[_Served]:
        old = self._main
        if old is None or look.main == old.files:
            return old
        cert_path, key_path = self._main_paths
        try:
            pair = load_pair(cert_path, key_path, CERT_PATH_VAR, KEY_PATH_VAR)
            if pair.same_material(old.pair):
                return _Served(old.pair, old.ctx, look.main)
            served = _Served(pair, self._context(pair, CERT_PATH_VAR), look.main)
        except TLSConfigError as e:
            errors[("main", cert_path)] = (str(e), True)
            return old
        events.append((
            "TLS certificate {path} reloaded: serves {names}",
            {"path": cert_path, "names": _describe(pair)},
        ))
        return served

    def _reload_store(self, look: _Look, errors: dict, events: list) -> dict:
        old_store = self._store
        if not self.store_paths:  # no folders to look at: the store stays as built
            return old_store
        if look.store_error is not None:
            errors[("store", None)] = (look.store_error, True)
            return old_store
        store = {}
        for cert_path, key_path, *files in look.store:
            files = tuple(files)
            old = old_store.get(cert_path)
            if old is not None and old.files == files and old.pair.key_path == key_path:
                store[cert_path] = old
                continue
            try:
                if key_path is None:
                    raise _no_key(cert_path)
                pair = load_pair(cert_path, key_path, STORE_VAR)
                if old is not None and pair.same_material(old.pair):
                    store[cert_path] = _Served(old.pair, old.ctx, files)
                    continue
                store[cert_path] = _Served(pair, self._context(pair, STORE_VAR), files)
            except TLSConfigError as e:
                errors[("store", cert_path)] = (str(e), old is not None)
                if old is not None:
                    store[cert_path] = old
                continue
            events.append((
                "TLS certificate {path} " + ("reloaded: " if old else "") + "serves {names}",
                {"path": cert_path, "names": _describe(pair)},
            ))
        for cert_path in sorted(old_store.keys() - store.keys()):
            events.append(("TLS certificate {path} removed", {"path": cert_path}))
        return store


def _describe(pair: CertificatePair) -> str:
    return ", ".join(pair.names) or "(no SANs)"


def _look(main_paths: Optional[tuple], store_paths: tuple) -> _Look:
    main = tuple(_stat(p) for p in main_paths) if main_paths else ()
    try:
        files = _store_files(store_paths, settling=True)
    except TLSConfigError as e:
        return _Look(main, (), str(e))
    store = tuple(
        (cert_path, key_path, _stat(cert_path), _stat(key_path))
        for cert_path, key_path in files
    )
    return _Look(main, store)


class CertificateWatcher(Service):
    """Calls L{ServerTLS.reload} every C{interval} seconds of C{clock}
    while running.  A stat of each file per look; nothing is read unless
    something changed."""

    def __init__(self, server_tls: ServerTLS, clock, interval: float = RELOAD_INTERVAL):
        self.server_tls = server_tls
        self.clock = clock
        self.interval = interval
        self._loop: Optional[LoopingCall] = None

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        Service.stopService(self)
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _tick(self) -> None:
        try:
            self.server_tls.reload()
        except Exception:  # keep looking: the next look may do better
            _log.failure("TLS certificate reload failed")


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
    there.  The key is the one read with the certificate (L{load_pair})."""
    return {
        "privateKey": pair.key,
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
