"""
The v0.16 TLS policy names (``KEDA_HTTP_TLS_*``) from the environment to
the TLS objects: versions in both spellings, the deprecated
``KEDA_HTTP_PROXY_TLS_*`` names winning when set, X25519MLKEM768 where the
OpenSSL in use has it, and the CA folders of ``KEDA_HTTP_TLS_CA_DIRS``
trusted upstream, over real loopback handshakes.
"""

from __future__ import annotations

import os

import attrs
import pytest
import pytest_twisted
import trustme
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel

from keda_proxy import _tls as tls
from keda_proxy._tls import TLSConfigError, TLSPolicy
from keda_proxy.downstream._tls import ServerTLS
from keda_proxy.ops._config import ConfigError, load_config
from keda_proxy.upstream._tls import UpstreamTLS
from tests.test_tls import ProbeClient, handshake, handshake_error, write_pair
from tests.test_tls import pod as pod  # noqa: F401 - fixtures
from tests.test_tls import ports as ports  # noqa: F401

PORTS = {"KEDA_HTTP_PROXY_PORT": "8080", "KEDA_HTTP_ADMIN_PORT": "9090"}


def from_env(**env):
    """A TLS-enabled Config read from the environment, as twistd reads it
    (with no main certificate, which the tests here do not need)."""
    return load_config({**PORTS, "KEDA_HTTP_PROXY_TLS_ENABLED": "true", **env},
                       tls_cert_path="", tls_key_path="")


def capture():
    events = []
    return Logger(observer=events.append), events


def openssl_has_x25519mlkem768():
    """Asked of the OpenSSL pyOpenSSL runs on (cryptography's bundled one),
    not of the system's `openssl` command, which may be another."""
    from OpenSSL._util import lib

    ok = lib.SSL_CTX_set1_curves_list(SSL.Context(SSL.TLS_METHOD)._context,
                                      b"X25519MLKEM768") == 1
    lib.ERR_clear_error()
    return ok


# ---------------------------------------------------------------------------
# Names to policy


@pytest.mark.parametrize(
    ("env", "low", "high"),
    [
        ({}, SSL.TLS1_2_VERSION, None),  # v0.16's defaults: Go's, 1.2 and up
        ({"KEDA_HTTP_TLS_MIN_VERSION": "TLS13"}, SSL.TLS1_3_VERSION, None),
        ({"KEDA_HTTP_TLS_MIN_VERSION": "tls12", "KEDA_HTTP_TLS_MAX_VERSION": "1.2"},
         SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION),
        ({"KEDA_HTTP_TLS_MAX_VERSION": "Tls13"}, SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION),
        # the deprecated name wins over the new one
        ({"KEDA_HTTP_PROXY_TLS_MIN_VERSION": "1.3", "KEDA_HTTP_TLS_MIN_VERSION": "1.2"},
         SSL.TLS1_3_VERSION, None),
        ({"KEDA_HTTP_PROXY_TLS_MAX_VERSION": "TLS12", "KEDA_HTTP_TLS_MAX_VERSION": "1.3"},
         SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION),
    ],
)
def test_versions_reach_the_policy(env, low, high):
    policy = TLSPolicy.from_config(from_env(**env))
    assert (policy.min_version, policy.max_version) == (low, high)


def test_suites_and_curves_reach_the_policy_under_either_name():
    new = TLSPolicy.from_config(from_env(
        KEDA_HTTP_TLS_CIPHER_SUITES="TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        KEDA_HTTP_TLS_CURVE_PREFERENCES="CurveP384,X25519",
    ))
    assert (new.cipher_list, new.groups) == (b"ECDHE-ECDSA-AES256-GCM-SHA384",
                                             b"secp384r1:X25519")
    old = TLSPolicy.from_config(from_env(
        KEDA_HTTP_TLS_CIPHER_SUITES="TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        KEDA_HTTP_PROXY_TLS_CIPHER_SUITES="TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        KEDA_HTTP_TLS_CURVE_PREFERENCES="CurveP384",
        KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES="P-521",
    ))
    assert (old.cipher_list, old.groups) == (b"ECDHE-RSA-AES128-GCM-SHA256", b"secp521r1")


def test_only_tls13_suites_with_a_12_maximum_names_the_v016_variables():
    with pytest.raises(TLSConfigError) as info:
        TLSPolicy.from_config(from_env(KEDA_HTTP_TLS_CIPHER_SUITES="TLS_AES_128_GCM_SHA256",
                                       KEDA_HTTP_TLS_MAX_VERSION="TLS12"))
    assert str(info.value) == (
        "KEDA_HTTP_TLS_CIPHER_SUITES: only TLS 1.3 suites are listed but "
        "KEDA_HTTP_TLS_MAX_VERSION is 1.2"
    )


@pytest.mark.parametrize(
    ("env", "verify"),
    [
        ({}, True),
        ({"KEDA_HTTP_TLS_SKIP_VERIFY": "true"}, False),
        ({"KEDA_HTTP_PROXY_TLS_SKIP_VERIFY": "true"}, False),
        # set to false, the deprecated name still wins
        ({"KEDA_HTTP_PROXY_TLS_SKIP_VERIFY": "false", "KEDA_HTTP_TLS_SKIP_VERIFY": "true"},
         True),
    ],
)
def test_skip_verify_reaches_the_upstream_side(env, verify):
    log, events = capture()
    upstream = UpstreamTLS.from_config(from_env(**env), log)
    assert upstream.verify is verify
    assert upstream.creatorForNetloc("web.default", 443).verify is verify
    warned = [e["log_format"] for e in events if e["log_level"] is LogLevel.warn]
    assert warned == ([] if verify else [
        "KEDA_HTTP_TLS_SKIP_VERIFY is true: upstream TLS certificates are NOT verified"
    ])


# ---------------------------------------------------------------------------
# X25519MLKEM768


@pytest.fixture
def main_pair(tmp_path):
    ca = trustme.CA()
    return write_pair(tmp_path / "main", "tls", ca.issue_cert("main.example"))


@pytest.fixture
def listen(ports):  # noqa: F811 - the fixture imported above
    @pytest_twisted.inlineCallbacks
    def start(server_tls):
        port = yield server_tls.endpoint(reactor, 0, "127.0.0.1").listen(
            Factory.forProtocol(Protocol))
        ports.append(port)
        return port.getHost().port

    return start


@pytest_twisted.inlineCallbacks
def test_x25519mlkem768_is_negotiated_or_refused_by_the_openssl_in_use(main_pair, listen):
    """Where the OpenSSL has the hybrid group, the listener negotiates it
    with a TLS 1.3 client; where it has not, startup stops in one line
    naming the variable and the value."""
    cert_path, key_path = main_pair
    env = {"KEDA_HTTP_TLS_CURVE_PREFERENCES": "X25519MLKEM768",
           "KEDA_HTTP_PROXY_TLS_CERT_PATH": cert_path,
           "KEDA_HTTP_PROXY_TLS_KEY_PATH": key_path}
    if not openssl_has_x25519mlkem768():
        with pytest.raises(ConfigError) as info:
            load_config({**PORTS, **env})
        assert len(str(info.value).splitlines()) == 1
        assert str(info.value).startswith(
            'invalid value for KEDA_HTTP_TLS_CURVE_PREFERENCES: "X25519MLKEM768" '
            "(X25519MLKEM768 is not supported by this interceptor's OpenSSL")
        return
    config = load_config({**PORTS, **env})
    port = yield listen(ServerTLS.from_config(config))
    result = yield handshake(ProbeClient("main.example"), port)
    assert (result.version, result.group) == ("TLSv1.3", "X25519MLKEM768")
    # a client without the group has no key share in common: refused
    classic = ProbeClient("main.example")
    assert tls._set_groups(classic.ctx, b"X25519")
    error = yield handshake_error(classic, port)
    assert isinstance(error, SSL.Error)


def test_x25519mlkem768_refusal_where_openssl_lacks_it(monkeypatch):
    """The other branch, forced: what an older OpenSSL gets."""
    monkeypatch.setattr(tls, "group_supported", lambda group: False)
    monkeypatch.setattr(tls, "OPENSSL_VERSION", "OpenSSL 3.0.13 30 Jan 2024")
    for name in ("KEDA_HTTP_TLS_CURVE_PREFERENCES", "KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES"):
        with pytest.raises(ConfigError) as info:
            load_config({**PORTS, name: "CurveP256,X25519MLKEM768"})
        assert str(info.value) == (
            f'invalid value for {name}: "CurveP256,X25519MLKEM768" '
            "(X25519MLKEM768 is not supported by this interceptor's OpenSSL "
            "(OpenSSL 3.0.13 30 Jan 2024); it needs OpenSSL 3.5 or later)"
        )


# ---------------------------------------------------------------------------
# KEDA_HTTP_TLS_CA_DIRS: which files are read


def pem(ca):
    return ca.cert_pem.bytes()


def subject(ca):
    return x509.load_pem_x509_certificate(pem(ca)).subject


def kubernetes_volume(folder, files):
    """Lay C{files} out as the kubelet does for a ConfigMap or Secret
    volume: the real files in ``..<timestamp>/``, a ``..data`` link to it,
    and one link per key through ``..data``."""
    stamp = folder / "..2026_07_29_10_00_00.123456789"
    stamp.mkdir(parents=True)
    for name, data in files.items():
        (stamp / name).write_bytes(data)
    os.symlink(stamp.name, folder / "..data")
    for name in files:
        os.symlink(f"..data/{name}", folder / name)
    return str(folder)


def test_every_file_is_read_whatever_its_name(tmp_path):
    cas = [trustme.CA() for _ in range(3)]
    folder = tmp_path / "ca"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(pem(cas[0]))
    (folder / "bundle.pem").write_bytes(pem(cas[1]) + pem(cas[2]))
    (folder / "corp-root").write_bytes(pem(cas[0]))  # no extension: read too
    found = tls.ca_dir_certificates([str(folder)])
    subjects = {c.subject for c in found}
    assert len(found) == 4
    assert subjects == {subject(ca) for ca in cas}


def test_kubernetes_volume_metadata_is_skipped_and_links_followed(tmp_path):
    ca = trustme.CA()
    folder = kubernetes_volume(tmp_path / "vol", {"ca.crt": pem(ca)})
    # the ..<timestamp> folder also holds junk: skipped with it, never read
    stamp = next(p for p in (tmp_path / "vol").iterdir() if p.name.startswith("..2026"))
    (stamp / "notes.txt").write_text("not a certificate")
    (tmp_path / "vol" / "..2026_junk").write_text("not a certificate")  # a ..file
    assert [c.subject for c in tls.ca_dir_certificates([folder])] == [subject(ca)]


def test_sub_folders_are_not_descended_into(tmp_path):
    ca = trustme.CA()
    (tmp_path / "ca" / "nested").mkdir(parents=True)
    (tmp_path / "ca" / "nested" / "ca.crt").write_bytes(pem(ca))
    (tmp_path / "ca" / "nested" / "junk").write_text("not a certificate")
    with pytest.raises(ValueError, match="no CA certificate found in "):
        tls.ca_dir_certificates([str(tmp_path / "ca")])


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("README", b"These are our CAs.\n"),
        ("ca.key", trustme.CA().private_key_pem.bytes()),
        ("empty.crt", b""),
        (".keep", b"hidden, but one dot: read, as in Go\n"),
    ],
)
def test_a_file_without_a_pem_certificate_is_an_error(tmp_path, name, data):
    folder = tmp_path / "ca"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(pem(trustme.CA()))
    (folder / name).write_bytes(data)
    with pytest.raises(ValueError) as info:
        tls.ca_dir_certificates([str(folder)])
    assert str(info.value) == f"no PEM certificate in {folder / name}"


def test_text_and_other_blocks_around_certificates_are_ignored(tmp_path):
    """As Go's AppendCertsFromPEM: a key next to the certificate, comments,
    and a certificate block that does not parse do not spoil the file."""
    ca = trustme.CA()
    folder = tmp_path / "ca"
    folder.mkdir()
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    (folder / "ca.pem").write_bytes(
        b"# corporate root\n" + ca.private_key_pem.bytes() + broken + pem(ca))
    assert len(tls.ca_dir_certificates([str(folder)])) == 1


def test_set_but_nothing_loaded_is_an_error(tmp_path):
    empty, hidden = tmp_path / "empty", tmp_path / "hidden"
    empty.mkdir()
    hidden.mkdir()
    (hidden / "..data").write_bytes(pem(trustme.CA()))  # skipped, so nothing
    with pytest.raises(ValueError) as info:
        tls.ca_dir_certificates([str(empty), str(hidden)])
    assert str(info.value) == f"no CA certificate found in {empty}, {hidden}"
    assert tls.ca_dir_certificates([]) == ()  # unset: nothing to load, no error


def test_unreadable_folder_is_an_error(tmp_path):
    a_file = tmp_path / "ca.crt"
    a_file.write_bytes(pem(trustme.CA()))
    for folder in (tmp_path / "absent", a_file):
        with pytest.raises(ValueError, match=f"cannot read CA folder {folder}: "):
            tls.ca_dir_certificates([str(folder)])


def test_upstream_tls_names_the_variable(tmp_path):
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "README").write_text("hello")
    with pytest.raises(ConfigError) as info:
        from_env(KEDA_HTTP_TLS_CA_DIRS=str(tmp_path / "ca"))
    assert str(info.value) == (
        f'invalid value for KEDA_HTTP_TLS_CA_DIRS: "{tmp_path / "ca"}" '
        f"(no PEM certificate in {tmp_path / 'ca' / 'README'})"
    )
    # built from a Config made directly, UpstreamTLS checks the folders too
    config = from_env()
    with pytest.raises(TLSConfigError) as info:
        UpstreamTLS.from_config(attrs.evolve(config, tls_ca_dirs=(str(tmp_path / "ca"),)))
    assert str(info.value) == (
        f"KEDA_HTTP_TLS_CA_DIRS: no PEM certificate in {tmp_path / 'ca' / 'README'}"
    )


# ---------------------------------------------------------------------------
# KEDA_HTTP_TLS_CA_DIRS: trusted upstream, over loopback


@pytest_twisted.inlineCallbacks
def test_a_ca_only_in_a_ca_dir_is_trusted_upstream(tmp_path, pod):  # noqa: F811
    private_ca, other_ca = trustme.CA(), trustme.CA()
    folder = kubernetes_volume(tmp_path / "vol", {"ca.crt": pem(private_ca)})
    port, factory = pod(private_ca.issue_cert("web.default"))

    without = UpstreamTLS.from_config(from_env())
    error = yield handshake_error(without.creatorForNetloc(b"web.default", port), port)
    assert isinstance(error, SSL.Error)

    log, events = capture()
    upstream = UpstreamTLS.from_config(from_env(KEDA_HTTP_TLS_CA_DIRS=folder), log)
    result = yield handshake(upstream.creatorForNetloc(b"web.default", port), port)
    assert result.names == ("web.default",)
    assert (yield factory.seen.get())[0] == b"web.default"
    assert [e["count"] for e in events if "count" in e] == [1]

    # trusted as a CA, not as a pass: the name is still checked ...
    error = yield handshake_error(upstream.creatorForNetloc(b"api.default", port), port)
    assert not isinstance(error, SSL.Error)  # a VerificationError, not a chain error
    # ... and another CA is still not trusted
    port, _ = pod(other_ca.issue_cert("web.default"))
    error = yield handshake_error(upstream.creatorForNetloc(b"web.default", port), port)
    assert isinstance(error, SSL.Error)
