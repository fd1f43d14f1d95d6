# -*- test-case-name: tests.test_tls -*-
"""
The TLS proxy listener's side of TLS.

L{ServerTLS} is the listener's connection creator:

 - it serves the main certificate (C{KEDA_HTTP_PROXY_TLS_CERT_PATH} /
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
 - it offers ALPN ``h2`` and ``http/1.1``, preferring ``h2`` as Go's
   listener does; a client that offers neither gets HTTP/1.1.

Behaviour follows the Go interceptor (``interceptor/tls_config.go``); the
versions, suites and groups are the shared L{keda_proxy._tls.TLSPolicy}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Optional

from attrs import field, frozen
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy._tls import (
    ALPN,
    ALPN_H2,
    CERT_PATH_VAR,
    KEY_PATH_VAR,
    STORE_VAR,
    CertificatePair,
    TLSConfigError,
    TLSMaterial,
    TLSPolicy,
    load_pair,
    missing_key,
    store_files,
    use_pair,
)

_log = Logger()


def _select_alpn(conn: SSL.Connection, offered: list) -> bytes:
    if ALPN_H2 in offered:
        return ALPN_H2
    return ALPN if ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _server_context(
    policy: TLSPolicy, pair: Optional[CertificatePair], var: str = CERT_PATH_VAR
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    policy.apply(ctx)
    ctx.set_session_id(b"keda-interceptor")
    ctx.set_alpn_select_callback(_select_alpn)
    if pair is not None:
        use_pair(ctx, pair, var, KEY_PATH_VAR if var == CERT_PATH_VAR else var)
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
                    raise missing_key(cert_path)
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
        files = store_files(store_paths, settling=True)
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
