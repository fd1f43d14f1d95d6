# -*- test-case-name: tests.test_tls_policy -*-
"""
What both TLS sides share: the L{TLSPolicy}, and reading certificates.

The listener (L{keda_proxy.downstream._tls}) and the upstream client
(L{keda_proxy.upstream._tls}) apply one L{TLSPolicy}, as v0.16 applies one
policy to its serving and its outbound C{tls.Config}: minimum and maximum
TLS version, TLS 1.2 cipher suites and key-exchange groups
(``KEDA_HTTP_TLS_*``, or the deprecated ``KEDA_HTTP_PROXY_TLS_*`` names:
L{keda_proxy.ops._config} resolves which one is in effect).  Both read the
same certificate files (L{TLSMaterial}: the main pair and the store), and
the upstream side the CA folders of C{KEDA_HTTP_TLS_CA_DIRS}, which the
configuration also checks at startup; so this module sits beside
L{keda_proxy._app}, outside either side's package.

Behaviour follows the Go interceptor (``interceptor/tls_config.go``); the
code is our own, on pyOpenSSL.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from typing import Optional

from attrs import field, frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet.ssl import AcceptableCiphers, TLSVersion

from keda_proxy.ops._config import GO_CIPHER_SUITES, GO_CURVES

CERT_PATH_VAR = "KEDA_HTTP_PROXY_TLS_CERT_PATH"
KEY_PATH_VAR = "KEDA_HTTP_PROXY_TLS_KEY_PATH"
STORE_VAR = "KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS"
CIPHERS_VAR = "KEDA_HTTP_TLS_CIPHER_SUITES"
CURVES_VAR = "KEDA_HTTP_TLS_CURVE_PREFERENCES"
MAX_VERSION_VAR = "KEDA_HTTP_TLS_MAX_VERSION"
SKIP_VERIFY_VAR = "KEDA_HTTP_TLS_SKIP_VERIFY"
CA_DIRS_VAR = "KEDA_HTTP_TLS_CA_DIRS"

#: The application protocols: HTTP/1.1, and HTTP/2 (``h2``), which both
#: sides prefer when the peer offers it.
ALPN = b"http/1.1"
ALPN_H2 = b"h2"

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


def ssl_reason(error: Exception) -> str:
    """One line out of an L{SSL.Error}'s list of (lib, func, reason)."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(str(entry[-1]) for entry in args[0])
    return str(error) or error.__class__.__name__


# ---------------------------------------------------------------------------
# Versions, ciphers, groups


def _groups_setter():
    """C{SSL_CTX_set1_curves_list} (alias of C{SSL_CTX_set1_groups_list})
    on a pyOpenSSL context, or None where cryptography's binding lacks it.

    pyOpenSSL has no public call for a group list (26.4 has none) and
    Twisted no argument for one, so this is the one place the TLS code
    reaches past a public API: the function comes from cryptography's
    documented binding (C{Binding().lib}), but the C{SSL_CTX} pointer it
    takes only from pyOpenSSL's private C{Context._context}.  Without it
    only one NIST curve can be pinned (C{set_tmp_ecdh}, listener only)."""
    lib = Binding().lib
    setter = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setter is None:  # pragma: no cover - depends on the binding
        return None

    def set_groups(ctx: SSL.Context, groups: bytes) -> bool:
        ok = setter(ctx._context, groups) == 1
        if not ok:
            lib.ERR_clear_error()
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
        arguments (the upstream side, which adds L{apply_groups})."""
        high = self.max_version
        return {
            "raiseMinimumTo": _TWISTED_VERSIONS[self.min_version],
            "lowerMaximumSecurityTo": None if high is None else _TWISTED_VERSIONS[high],
            "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(
                self.cipher_list.decode("ascii")
            ),
        }

    def apply_groups(self, ctx: SSL.Context) -> None:
        """The key-exchange groups on a context that has already made a
        connection: the upstream side reaches its contexts only through
        one.  pyOpenSSL then refuses C{set_tmp_ecdh}, so this needs the
        group-list binding."""
        if self.groups is None:
            return
        if _set_groups is None:
            raise TLSConfigError(
                f"{CURVES_VAR}: upstream TLS needs a pyOpenSSL that can set a group list"
            )
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
                f"{CIPHERS_VAR}: no usable cipher suite ({ssl_reason(e)})"
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
    use_pair(SSL.Context(SSL.TLS_SERVER_METHOD), pair, cert_var, key_var)
    return pair


def use_pair(
    ctx: SSL.Context, pair: CertificatePair, cert_var: str, key_var: Optional[str] = None
) -> None:
    try:
        ctx.use_certificate(pair.leaf)
        for cert in pair.chain[1:]:
            ctx.add_extra_chain_cert(cert)
    except SSL.Error as e:
        raise TLSConfigError(
            f"{cert_var}: cannot load certificate {pair.cert_path}: {ssl_reason(e)}"
        ) from None
    try:
        ctx.use_privatekey(pair.key)
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as e:
        reason = ssl_reason(e) if isinstance(e, SSL.Error) else str(e)
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


def store_files(folders: Iterable[str], settling: bool = False) -> list:
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


def missing_key(cert_path: str) -> TLSConfigError:
    stem = cert_path[:-4]
    return TLSConfigError(
        f"{STORE_VAR}: no key found for certificate {cert_path} "
        f"(expected {stem}.key or {stem}-key.pem)"
    )


def load_store(folders: Iterable[str]) -> list:
    """Every certificate/key pair under C{folders}, walked recursively
    (see L{store_files} for the pairing).  A certificate without a key
    stops startup; a key without a certificate is ignored.
    """
    pairs = []
    for cert_path, key_path in store_files(folders):
        if key_path is None:
            raise missing_key(cert_path)
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

PEM_CERTIFICATE_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


def pem_certificates(data: bytes) -> list:
    """The certificates of the PEM ``CERTIFICATE`` blocks in C{data}, taken
    as Go's C{CertPool.AppendCertsFromPEM} takes them: other blocks (keys)
    and text around them are ignored, and so is a block that does not
    parse."""
    found = []
    for block in PEM_CERTIFICATE_BLOCK.findall(data):
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
