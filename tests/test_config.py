"""Configuration from the Go interceptor's environment variables."""

from pathlib import Path

import attrs
import pytest
import trustme
from twisted.logger import Logger, LogLevel, formatEvent

from keda_proxy.ops._config import (
    ENV_VARS,
    GO_CIPHER_SUITES,
    Config,
    ConfigError,
    env_table_markdown,
    load_config,
)

PORTS = {"KEDA_HTTP_PROXY_PORT": "8080", "KEDA_HTTP_ADMIN_PORT": "9090"}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def load(log=None, **env_and_overrides):
    """Load from the two required ports plus upper-case keys as env vars."""
    env = dict(PORTS)
    overrides = {}
    for key, value in env_and_overrides.items():
        if key.isupper():
            env[key] = value
        else:
            overrides[key] = value
    return load_config(env, log=log, **overrides)


def capture():
    events = []
    return Logger(observer=events.append), events


def warnings(events):
    return [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]


def error_for(env):
    with pytest.raises(ConfigError) as info:
        load_config({**PORTS, **env})
    return info.value


# Defaults


def test_defaults_match_the_go_interceptor():
    config = load()
    assert attrs.asdict(config, recurse=False) == {
        "proxy_port": 8080,
        "admin_port": 9090,
        "proxy_tls_port": 8443,
        "watch_namespace": "",
        "resync_period": 3600.0,
        "request_timeout": 0.0,
        "response_header_timeout": 300.0,
        "readiness_timeout": 0.0,
        "connect_timeout": 0.5,
        "max_idle_conns": 1000,
        "max_idle_conns_per_host": 200,
        "proxy_tls_enabled": False,
        "tls_cert_path": "/certs/tls.crt",
        "tls_key_path": "/certs/tls.key",
        "tls_cert_store_paths": (),
        "tls_skip_verify": False,
        "tls_min_version": "",
        "tls_max_version": "",
        "tls_cipher_suites": (),
        "tls_curve_preferences": (),
        "tls_ca_dirs": (),
        "enable_cold_start_header": True,
        "cold_start_max_pending_requests": 0,  # no limit
        "log_requests": False,
        "direct_pod_routing": True,  # v0.16's default
        "direct_pod_warm_connections": 0,  # an extension
        "endpoint_selector": "random",  # an extension
        "request_steps": (),  # an extension
        "drain_timeout": 30.0,
        "shutdown_delay": 5.0,
        "prom_exporter_enabled": True,
        "prom_exporter_port": 2223,
        "otlp_metrics_enabled": False,
        "otlp_traces_enabled": False,
        "otlp_traces_protocol": "console",
        "profiling_bind_address": "",
        "kubeconfig": None,
        "manifests": None,
    }


def test_class_defaults_equal_loaded_defaults():
    """Config(...) built directly in other tests means the same as the env."""
    assert Config(proxy_port=8080, admin_port=9090) == load()


def test_default_config_logs_nothing():
    log, events = capture()
    load(log=log)
    assert events == []


def test_config_is_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        load().proxy_port = 1


def test_empty_value_counts_as_unset():
    config = load(
        KEDA_HTTP_CONNECT_TIMEOUT="",
        KEDA_HTTP_ENABLE_COLD_START_HEADER="",
        KEDA_HTTP_PROXY_TLS_PORT="",
    )
    assert config.connect_timeout == 0.5
    assert config.enable_cold_start_header is True
    assert config.proxy_tls_port == 8443


# Required ports


@pytest.mark.parametrize("name", ["KEDA_HTTP_PROXY_PORT", "KEDA_HTTP_ADMIN_PORT"])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_required_port_missing(name, how):
    env = dict(PORTS)
    if how == "absent":
        del env[name]
    else:
        env[name] = ""
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert info.value.name == name
    assert str(info.value) == (
        f"missing required {name} (expected a port number from 0 to 65535)"
    )


# Types


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_bool_true_spellings(text):
    assert load(KEDA_HTTP_LOG_REQUESTS=text).log_requests is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_bool_false_spellings(text):
    assert (
        load(KEDA_HTTP_ENABLE_COLD_START_HEADER=text).enable_cold_start_header is False
    )


@pytest.mark.parametrize("text", ["yes", "on", "tRUE", " true", "2", "enabled"])
def test_bool_invalid(text):
    error = error_for({"KEDA_HTTP_DIRECT_POD_ROUTING": text})
    assert error.name == "KEDA_HTTP_DIRECT_POD_ROUTING"
    assert error.value == text


@pytest.mark.parametrize(("text", "port"), [("0", 0), ("65535", 65535), ("+80", 80)])
def test_port_valid(text, port):
    assert load(KEDA_HTTP_PROXY_PORT=text).proxy_port == port


@pytest.mark.parametrize("text", ["65536", "-1", "80a", "0x50", " 80", "8_0", "8.0"])
def test_port_invalid(text):
    error = error_for({"KEDA_HTTP_ADMIN_PORT": text})
    assert error.name == "KEDA_HTTP_ADMIN_PORT"
    assert "0 to 65535" in str(error)


def test_count_valid():
    config = load(
        KEDA_HTTP_MAX_IDLE_CONNS="0", KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST="5000"
    )
    assert (config.max_idle_conns, config.max_idle_conns_per_host) == (0, 5000)


@pytest.mark.parametrize("text", ["-1", "1e3", "many"])
def test_count_invalid(text):
    assert (
        error_for({"KEDA_HTTP_MAX_IDLE_CONNS": text}).name == "KEDA_HTTP_MAX_IDLE_CONNS"
    )


@pytest.mark.parametrize(("text", "limit"), [("0", 0), ("1", 1), ("100000", 100000),
                                             ("+7", 7)])
def test_cold_start_max_pending_requests_valid(text, limit):
    config = load(KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS=text)
    assert config.cold_start_max_pending_requests == limit


@pytest.mark.parametrize("text", ["-1", "ten", "1.5", "1e3", "0x10", " 5"])
def test_cold_start_max_pending_requests_invalid_stops_startup(text):
    error = error_for({"KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS": text})
    assert str(error) == (
        f'invalid value for KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS: "{text}" '
        "(expected a non-negative whole number)")


@pytest.mark.parametrize(
    ("text", "seconds"), [("1m30s", 90.0), ("0", 0.0), ("250ms", 0.25), ("2h", 7200.0)]
)
def test_duration_valid(text, seconds):
    assert load(KEDA_HTTP_REQUEST_TIMEOUT=text).request_timeout == seconds


def test_duration_without_unit_is_rejected():
    error = error_for({"KEDA_HTTP_DRAIN_TIMEOUT": "30"})
    assert str(error) == (
        'invalid value for KEDA_HTTP_DRAIN_TIMEOUT: "30" '
        '(expected a Go duration such as "500ms")'
    )


def test_negative_duration_is_rejected():
    error = error_for({"KEDA_HTTP_SHUTDOWN_DELAY": "-1s"})
    assert error.name == "KEDA_HTTP_SHUTDOWN_DELAY"
    assert "negative" in str(error)


def test_string_values_are_kept_verbatim():
    config = load(
        KEDA_HTTP_WATCH_NAMESPACE="team-a",
        KEDA_HTTP_PROXY_TLS_CERT_PATH="/tls/a.crt",
        KEDA_HTTP_PROXY_TLS_KEY_PATH="/tls/a.key",
    )
    assert config.watch_namespace == "team-a"
    assert (config.tls_cert_path, config.tls_key_path) == ("/tls/a.crt", "/tls/a.key")


def test_cert_store_paths_split_on_commas_dropping_blanks():
    config = load(KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS=" /certs/a, ,/certs/b ,")
    assert config.tls_cert_store_paths == ("/certs/a", "/certs/b")


# TLS settings (v0.16 names; the deprecated KEDA_HTTP_PROXY_TLS_* below)

#: v0.16 accepts the short and the KEDA/operator spelling, in any case.
VERSION_FORMS = [
    ("1.2", "1.2"), ("TLS12", "1.2"), ("tls12", "1.2"), ("Tls12", "1.2"),
    ("1.3", "1.3"), ("TLS13", "1.3"), ("tls13", "1.3"), ("tLS13", "1.3"),
]


@pytest.mark.parametrize("name", ["KEDA_HTTP_TLS_MIN_VERSION", "KEDA_HTTP_TLS_MAX_VERSION"])
@pytest.mark.parametrize(("text", "version"), VERSION_FORMS)
def test_tls_versions_valid(name, text, version):
    config = load(**{name: text})
    field_name = "tls_min_version" if "MIN" in name else "tls_max_version"
    assert getattr(config, field_name) == version


@pytest.mark.parametrize("name", ["KEDA_HTTP_TLS_MIN_VERSION", "KEDA_HTTP_TLS_MAX_VERSION"])
@pytest.mark.parametrize(
    "text", ["1.1", "1.0", "TLS1.3", "TLS11", "tls 13", "1.4", "13", " 1.2", "TLSv1.2"]
)
def test_tls_versions_invalid(name, text):
    error = error_for({name: text})
    assert (error.name, error.value) == (name, text)
    assert '"1.2"/"TLS12" or "1.3"/"TLS13"' in str(error)
    assert len(str(error).splitlines()) == 1


@pytest.mark.parametrize(
    "name",
    [
        "KEDA_HTTP_TLS_MIN_VERSION",
        "KEDA_HTTP_TLS_MAX_VERSION",
        "KEDA_HTTP_TLS_CIPHER_SUITES",
        "KEDA_HTTP_TLS_CURVE_PREFERENCES",
        "KEDA_HTTP_TLS_SKIP_VERIFY",
        "KEDA_HTTP_TLS_CA_DIRS",
    ],
)
def test_tls_empty_value_keeps_the_default(name):
    """Empty is unset: minimum 1.2, highest maximum, Go's suites and
    curves, verification on, system CAs only (see TLSPolicy)."""
    log, events = capture()
    assert load(log=log, **{name: ""}) == load()
    assert events == []


def test_tls_min_above_max_is_rejected():
    error = error_for({"KEDA_HTTP_TLS_MIN_VERSION": "TLS13", "KEDA_HTTP_TLS_MAX_VERSION": "1.2"})
    assert str(error) == (
        'invalid value for KEDA_HTTP_TLS_MIN_VERSION: "TLS13" '
        '(above KEDA_HTTP_TLS_MAX_VERSION "1.2")'
    )


def test_tls_min_above_max_names_the_deprecated_variable_that_set_it():
    error = error_for(
        {"KEDA_HTTP_TLS_MIN_VERSION": "1.3", "KEDA_HTTP_PROXY_TLS_MAX_VERSION": "tls12"}
    )
    assert str(error) == (
        'invalid value for KEDA_HTTP_TLS_MIN_VERSION: "1.3" '
        '(above KEDA_HTTP_PROXY_TLS_MAX_VERSION "tls12")'
    )


def test_tls_only_one_bound_is_fine():
    assert load(KEDA_HTTP_TLS_MIN_VERSION="1.3").tls_max_version == ""


def test_cipher_suites_are_go_names():
    text = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,"
    config = load(KEDA_HTTP_TLS_CIPHER_SUITES=text)
    assert config.tls_cipher_suites == (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
    )
    assert GO_CIPHER_SUITES["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"] == (
        "ECDHE-RSA-AES128-GCM-SHA256"
    )


@pytest.mark.parametrize(
    "name", ["TLS_RSA_WITH_RC4_128_SHA", "ECDHE-RSA-AES128-GCM-SHA256", "bogus"]
)
def test_cipher_suites_unknown_name(name):
    """Go rejects insecure and OpenSSL-spelled names alike."""
    text = f"TLS_AES_128_GCM_SHA256,{name}"
    error = error_for({"KEDA_HTTP_TLS_CIPHER_SUITES": text})
    assert str(error) == (
        f'invalid value for KEDA_HTTP_TLS_CIPHER_SUITES: "{text}" '
        f"(unknown cipher suite {name})"
    )


def test_curve_preferences():
    config = load(KEDA_HTTP_TLS_CURVE_PREFERENCES="X25519, CurveP256,P-384, CurveP521,P-521")
    assert config.tls_curve_preferences == ("X25519", "CurveP256", "P-384", "CurveP521", "P-521")


def test_curve_preferences_unknown_name():
    error = error_for({"KEDA_HTTP_TLS_CURVE_PREFERENCES": "X25519,P-999"})
    assert str(error) == (
        'invalid value for KEDA_HTTP_TLS_CURVE_PREFERENCES: "X25519,P-999" '
        "(unknown curve P-999)"
    )


# X25519MLKEM768 depends on the OpenSSL pyOpenSSL runs on (cryptography's),
# which is not necessarily the system's `openssl`: ask that one directly.


def openssl_has_x25519mlkem768():
    from OpenSSL import SSL
    from OpenSSL._util import lib

    # SSL_CTX_set1_groups_list, under its older name, the one bound
    ok = lib.SSL_CTX_set1_curves_list(SSL.Context(SSL.TLS_METHOD)._context,
                                      b"X25519MLKEM768") == 1
    lib.ERR_clear_error()
    return ok


def test_x25519mlkem768_follows_the_openssl_in_use():
    env = {"KEDA_HTTP_TLS_CURVE_PREFERENCES": "X25519MLKEM768,X25519"}
    if openssl_has_x25519mlkem768():
        config = load_config({**PORTS, **env})
        assert config.tls_curve_preferences == ("X25519MLKEM768", "X25519")
    else:
        error = error_for(env)
        assert error.name == "KEDA_HTTP_TLS_CURVE_PREFERENCES"
        assert "X25519MLKEM768 is not supported" in str(error)


def test_x25519mlkem768_refused_in_one_line_where_openssl_lacks_it(monkeypatch):
    """The other branch, whatever this machine's OpenSSL: the group is
    refused at startup, naming the variable, the value and the OpenSSL."""
    from keda_proxy import _tls as tls

    asked = []

    def lacking(group):
        asked.append(group)
        return False

    monkeypatch.setattr(tls, "group_supported", lacking)
    monkeypatch.setattr(tls, "OPENSSL_VERSION", "OpenSSL 3.0.2 15 Mar 2022")
    error = error_for({"KEDA_HTTP_TLS_CURVE_PREFERENCES": "X25519, X25519MLKEM768"})
    assert str(error) == (
        'invalid value for KEDA_HTTP_TLS_CURVE_PREFERENCES: "X25519, X25519MLKEM768" '
        "(X25519MLKEM768 is not supported by this interceptor's OpenSSL "
        "(OpenSSL 3.0.2 15 Mar 2022); it needs OpenSSL 3.5 or later)"
    )
    assert asked == ["X25519MLKEM768"]  # the other curves need no probe
    assert load(KEDA_HTTP_TLS_CURVE_PREFERENCES="X25519,P-256").tls_curve_preferences


def test_group_probe_asks_openssl():
    from keda_proxy import _tls as tls

    assert tls.group_supported("X25519MLKEM768") is openssl_has_x25519mlkem768()
    assert tls.group_supported("prime256v1") is True
    assert tls.group_supported("bogus-group") is False


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), ("False", False)])
def test_skip_verify(text, value):
    assert load(KEDA_HTTP_TLS_SKIP_VERIFY=text).tls_skip_verify is value


def test_skip_verify_invalid():
    error = error_for({"KEDA_HTTP_TLS_SKIP_VERIFY": "yes"})
    assert (error.name, error.value) == ("KEDA_HTTP_TLS_SKIP_VERIFY", "yes")


# KEDA_HTTP_TLS_CA_DIRS: read at startup, whether or not TLS is on


def ca_dir(folder, *cas):
    folder.mkdir(parents=True, exist_ok=True)
    for i, ca in enumerate(cas):
        ca.cert_pem.write_to_path(str(folder / f"ca{i}.crt"))
    return str(folder)


def test_ca_dirs_split_on_commas(tmp_path):
    a, b = ca_dir(tmp_path / "a", trustme.CA()), ca_dir(tmp_path / "b", trustme.CA())
    config = load(KEDA_HTTP_TLS_CA_DIRS=f" {a}, ,{b},")
    assert config.tls_ca_dirs == (a, b)


@pytest.mark.parametrize("text", [",", " , ", " "])
def test_ca_dirs_naming_no_folder_is_an_error(text):
    error = error_for({"KEDA_HTTP_TLS_CA_DIRS": text})
    assert (error.name, error.value) == ("KEDA_HTTP_TLS_CA_DIRS", text)


def test_ca_dirs_with_a_file_without_certificate_is_an_error(tmp_path):
    folder = ca_dir(tmp_path / "ca", trustme.CA())
    (tmp_path / "ca" / "README").write_text("not a certificate\n")
    error = error_for({"KEDA_HTTP_TLS_CA_DIRS": folder})
    assert str(error) == (
        f'invalid value for KEDA_HTTP_TLS_CA_DIRS: "{folder}" '
        f"(no PEM certificate in {folder}/README)"
    )


def test_ca_dirs_with_no_certificate_at_all_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    text = f"{tmp_path / 'empty'}"
    error = error_for({"KEDA_HTTP_TLS_CA_DIRS": text})
    assert str(error) == (
        f'invalid value for KEDA_HTTP_TLS_CA_DIRS: "{text}" '
        f"(no CA certificate found in {text})"
    )


def test_ca_dirs_missing_folder_is_an_error(tmp_path):
    text = str(tmp_path / "absent")
    error = error_for({"KEDA_HTTP_TLS_CA_DIRS": text})
    assert "cannot read CA folder" in str(error) and error.value == text


def test_ca_dirs_are_checked_even_with_tls_off(tmp_path):
    (tmp_path / "empty").mkdir()
    error = error_for({"KEDA_HTTP_PROXY_TLS_ENABLED": "false",
                       "KEDA_HTTP_TLS_CA_DIRS": str(tmp_path / "empty")})
    assert error.name == "KEDA_HTTP_TLS_CA_DIRS"


# Accepted-but-unsupported settings


def test_traces_protocol_is_case_insensitive():
    assert (
        load(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="GRPC").otlp_traces_protocol == "GRPC"
    )


def test_traces_protocol_invalid():
    error = error_for({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "zipkin"})
    assert error.name == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"


def test_a_profiling_address_is_taken_without_a_warning():
    log, events = capture()
    assert load(log=log, PROFILING_BIND_ADDRESS=":6060").profiling_bind_address == ":6060"
    assert warnings(events) == []


# Overrides (the twistd command line)


def test_override_wins_over_env():
    config = load(proxy_port=1234, admin_port=0, KEDA_HTTP_PROXY_PORT="8080")
    assert (config.proxy_port, config.admin_port) == (1234, 0)


def test_override_none_means_not_given():
    config = load(proxy_port=None, manifests=None, kubeconfig=None)
    assert (config.proxy_port, config.manifests, config.kubeconfig) == (
        8080,
        None,
        None,
    )


def test_override_supplies_required_port():
    config = load_config({}, proxy_port=1, admin_port=2)
    assert (config.proxy_port, config.admin_port) == (1, 2)


def test_overridden_variable_is_not_read():
    """A bad env value under a command-line override must not block startup."""
    config = load_config({"KEDA_HTTP_PROXY_PORT": "junk"}, proxy_port=1, admin_port=2)
    assert config.proxy_port == 1


def test_manifests_and_kubeconfig_overrides():
    config = load(
        manifests="/etc/routes", kubeconfig="/root/kube", KUBECONFIG="/env/kube"
    )
    assert (config.manifests, config.kubeconfig) == ("/etc/routes", "/root/kube")


def test_kubeconfig_from_env():
    assert (
        load(KUBECONFIG="/home/me/.kube/config").kubeconfig == "/home/me/.kube/config"
    )


def test_unknown_override_is_a_programming_error():
    with pytest.raises(TypeError, match="proxy_prot"):
        load(proxy_prot=1)


@pytest.mark.parametrize("value", [70000, -1, "80", True])
def test_override_port_out_of_range(value):
    with pytest.raises(ConfigError) as info:
        load(admin_port=value)
    assert str(info.value) == (
        f'invalid value for KEDA_HTTP_ADMIN_PORT: "{value}" '
        "(from the command line; expected a port number from 0 to 65535)"
    )


# Deprecated names


def test_deprecated_names_override_the_new_ones_and_warn():
    log, events = capture()
    config = load(
        log=log,
        KEDA_HTTP_READINESS_TIMEOUT="25s",
        KEDA_CONDITION_WAIT_TIMEOUT="31s",
        KEDA_HTTP_RESPONSE_HEADER_TIMEOUT="60s",
        KEDA_RESPONSE_HEADER_TIMEOUT="7s",
    )
    assert (config.readiness_timeout, config.response_header_timeout) == (31.0, 7.0)
    assert sorted(warnings(events)) == [
        "KEDA_CONDITION_WAIT_TIMEOUT is deprecated, use KEDA_HTTP_READINESS_TIMEOUT instead",
        (
            "KEDA_RESPONSE_HEADER_TIMEOUT is deprecated, use "
            "KEDA_HTTP_RESPONSE_HEADER_TIMEOUT instead"
        ),
    ]


def test_deprecated_name_alone_replaces_the_default():
    config = load(KEDA_RESPONSE_HEADER_TIMEOUT="10s")
    assert config.response_header_timeout == 10.0


@pytest.mark.parametrize("text", ["0s", "0", ""])
def test_deprecated_zero_is_ignored_silently(text):
    log, events = capture()
    config = load(
        log=log, KEDA_HTTP_READINESS_TIMEOUT="25s", KEDA_CONDITION_WAIT_TIMEOUT=text
    )
    assert config.readiness_timeout == 25.0
    assert events == []


def test_deprecated_invalid_value_names_the_old_variable():
    error = error_for({"KEDA_CONDITION_WAIT_TIMEOUT": "31"})
    assert error.name == "KEDA_CONDITION_WAIT_TIMEOUT"


#: The v0.16 TLS policy names and their deprecated KEDA_HTTP_PROXY_TLS_*
#: names, with a value for each (old, new) that differ, and the field.
TLS_RENAMES = [
    ("KEDA_HTTP_PROXY_TLS_MIN_VERSION", "KEDA_HTTP_TLS_MIN_VERSION",
     ("TLS13", "1.2"), "tls_min_version", ("1.3", "1.2")),
    ("KEDA_HTTP_PROXY_TLS_MAX_VERSION", "KEDA_HTTP_TLS_MAX_VERSION",
     ("tls13", "1.2"), "tls_max_version", ("1.3", "1.2")),
    ("KEDA_HTTP_PROXY_TLS_CIPHER_SUITES", "KEDA_HTTP_TLS_CIPHER_SUITES",
     ("TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
     "tls_cipher_suites",
     (("TLS_AES_128_GCM_SHA256",), ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",))),
    ("KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES", "KEDA_HTTP_TLS_CURVE_PREFERENCES",
     ("CurveP256", "X25519"), "tls_curve_preferences", (("CurveP256",), ("X25519",))),
    ("KEDA_HTTP_PROXY_TLS_SKIP_VERIFY", "KEDA_HTTP_TLS_SKIP_VERIFY",
     ("true", "false"), "tls_skip_verify", (True, False)),
]


@pytest.mark.parametrize(("old", "new", "texts", "field_name", "values"), TLS_RENAMES,
                         ids=lambda v: v if isinstance(v, str) and "KEDA" in v else "")
def test_deprecated_tls_name_alone_still_works_with_one_warning(
        old, new, texts, field_name, values):
    log, events = capture()
    config = load(log=log, **{old: texts[0]})
    assert getattr(config, field_name) == values[0]
    assert warnings(events) == [f"{old} is deprecated, use {new} instead"]


@pytest.mark.parametrize(("old", "new", "texts", "field_name", "values"), TLS_RENAMES,
                         ids=lambda v: v if isinstance(v, str) and "KEDA" in v else "")
def test_deprecated_tls_name_wins_over_the_new_one(old, new, texts, field_name, values):
    """v0.16: a deprecated TLS policy name that is set takes precedence."""
    log, events = capture()
    config = load(log=log, **{old: texts[0], new: texts[1]})
    assert getattr(config, field_name) == values[0]
    assert warnings(events) == [f"{old} is deprecated, use {new} instead"]


@pytest.mark.parametrize(("old", "new", "texts", "field_name", "values"), TLS_RENAMES,
                         ids=lambda v: v if isinstance(v, str) and "KEDA" in v else "")
def test_new_tls_name_alone_logs_nothing(old, new, texts, field_name, values):
    log, events = capture()
    config = load(log=log, **{new: texts[1], old: ""})  # empty: unset
    assert getattr(config, field_name) == values[1]
    assert events == []


def test_every_deprecated_tls_name_warns_once():
    log, events = capture()
    load(log=log, **{old: texts[0] for old, _, texts, _, _ in TLS_RENAMES})
    assert sorted(warnings(events)) == sorted(
        f"{old} is deprecated, use {new} instead" for old, new, *_ in TLS_RENAMES
    )


def test_deprecated_skip_verify_false_still_wins():
    """Set to false, the old name overrides KEDA_HTTP_TLS_SKIP_VERIFY=true:
    v0.16 reads it as a *bool, so "set" is what counts, not "true"."""
    config = load(KEDA_HTTP_PROXY_TLS_SKIP_VERIFY="false", KEDA_HTTP_TLS_SKIP_VERIFY="true")
    assert config.tls_skip_verify is False


@pytest.mark.parametrize(
    ("old", "text"),
    [
        ("KEDA_HTTP_PROXY_TLS_MIN_VERSION", "1.1"),
        ("KEDA_HTTP_PROXY_TLS_MAX_VERSION", "TLS1.3"),
        ("KEDA_HTTP_PROXY_TLS_CIPHER_SUITES", "bogus"),
        ("KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES", "P-999"),
        ("KEDA_HTTP_PROXY_TLS_SKIP_VERIFY", "yes"),
    ],
)
def test_deprecated_tls_invalid_value_names_the_old_variable(old, text):
    error = error_for({old: text})
    assert (error.name, error.value) == (old, text)


def test_override_beats_deprecated_name():
    log, events = capture()
    config = load(log=log, readiness_timeout=2.0, KEDA_CONDITION_WAIT_TIMEOUT="31s")
    assert config.readiness_timeout == 2.0
    assert events == []


# One-line errors


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KEDA_HTTP_CONNECT_TIMEOUT", "5 seconds"),
        ("KEDA_HTTP_CONNECT_TIMEOUT", "5s\nKEDA_HTTP_ADMIN_PORT=1"),
        ("KEDA_HTTP_PROXY_TLS_PORT", "84\r43"),
        ("KEDA_HTTP_LOG_REQUESTS", "yes\u2028no"),
        ("OTEL_PROM_EXPORTER_PORT", 'a"b'),
    ],
)
def test_error_is_one_line_naming_variable_and_value(name, value):
    error = error_for({name: value})
    text = str(error)
    assert len(text.splitlines()) == 1
    assert text.startswith(f"invalid value for {name}: ")
    first_line_of_value = value.splitlines()[0].replace('"', '\\"')
    assert first_line_of_value in text


def test_error_message_format():
    error = error_for({"KEDA_HTTP_CONNECT_TIMEOUT": "5 seconds"})
    assert str(error) == (
        'invalid value for KEDA_HTTP_CONNECT_TIMEOUT: "5 seconds" '
        '(expected a Go duration such as "500ms")'
    )


# ENV_VARS is complete, read, and documented

#: A valid, non-default value for every variable and what it must become.
SAMPLES = {
    "KEDA_HTTP_PROXY_PORT": ("1", 1),
    "KEDA_HTTP_ADMIN_PORT": ("2", 2),
    "KEDA_HTTP_PROXY_TLS_PORT": ("9443", 9443),
    "KEDA_HTTP_WATCH_NAMESPACE": ("ns", "ns"),
    "KEDA_HTTP_SCALER_CONFIG_MAP_INFORMER_RSYNC_PERIOD": ("1m", 60.0),
    "KEDA_HTTP_REQUEST_TIMEOUT": ("1s", 1.0),
    "KEDA_HTTP_RESPONSE_HEADER_TIMEOUT": ("2s", 2.0),
    "KEDA_HTTP_READINESS_TIMEOUT": ("3s", 3.0),
    "KEDA_HTTP_CONNECT_TIMEOUT": ("4s", 4.0),
    "KEDA_HTTP_MAX_IDLE_CONNS": ("5", 5),
    "KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST": ("6", 6),
    "KEDA_HTTP_PROXY_TLS_ENABLED": ("true", True),
    "KEDA_HTTP_PROXY_TLS_CERT_PATH": ("/c", "/c"),
    "KEDA_HTTP_PROXY_TLS_KEY_PATH": ("/k", "/k"),
    "KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS": ("/s", ("/s",)),
    "KEDA_HTTP_TLS_SKIP_VERIFY": ("true", True),
    "KEDA_HTTP_TLS_MIN_VERSION": ("TLS13", "1.3"),
    "KEDA_HTTP_TLS_MAX_VERSION": ("tls12", "1.2"),
    "KEDA_HTTP_TLS_CIPHER_SUITES": (
        "TLS_AES_128_GCM_SHA256",
        ("TLS_AES_128_GCM_SHA256",),
    ),
    "KEDA_HTTP_TLS_CURVE_PREFERENCES": ("X25519", ("X25519",)),
    "KEDA_HTTP_TLS_CA_DIRS": ("(a folder made by the test)", None),
    "KEDA_HTTP_ENABLE_COLD_START_HEADER": ("false", False),
    "KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS": ("500", 500),
    "KEDA_HTTP_LOG_REQUESTS": ("true", True),
    "KEDA_HTTP_DIRECT_POD_ROUTING": ("false", False),
    "KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS": ("64", 64),  # an extension
    "KEDA_HTTP_ENDPOINT_SELECTOR": ("round-robin", "round-robin"),  # an extension
    "KEDA_HTTP_REQUEST_STEPS": (" api-key, add-tenant ", ("api-key", "add-tenant")),
    "KEDA_HTTP_DRAIN_TIMEOUT": ("7s", 7.0),
    "KEDA_HTTP_SHUTDOWN_DELAY": ("8s", 8.0),
    "OTEL_PROM_EXPORTER_ENABLED": ("false", False),
    "OTEL_PROM_EXPORTER_PORT": ("9", 9),
    "OTEL_EXPORTER_OTLP_METRICS_ENABLED": ("true", True),
    "OTEL_EXPORTER_OTLP_TRACES_ENABLED": ("true", True),
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": ("grpc", "grpc"),
    "PROFILING_BIND_ADDRESS": (":6060", ":6060"),
    "KUBECONFIG": ("/kube", "/kube"),
    "KEDA_CONDITION_WAIT_TIMEOUT": ("10s", 10.0),
    "KEDA_RESPONSE_HEADER_TIMEOUT": ("11s", 11.0),
    "KEDA_HTTP_PROXY_TLS_SKIP_VERIFY": ("true", True),
    "KEDA_HTTP_PROXY_TLS_MIN_VERSION": ("1.3", "1.3"),
    "KEDA_HTTP_PROXY_TLS_MAX_VERSION": ("TLS12", "1.2"),
    "KEDA_HTTP_PROXY_TLS_CIPHER_SUITES": (
        "TLS_AES_256_GCM_SHA384",
        ("TLS_AES_256_GCM_SHA384",),
    ),
    "KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES": ("P-384", ("P-384",)),
}

#: Variables whose every text is valid.
FREE_TEXT = {
    "KEDA_HTTP_WATCH_NAMESPACE",
    "KEDA_HTTP_PROXY_TLS_CERT_PATH",
    "KEDA_HTTP_PROXY_TLS_KEY_PATH",
    "KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS",
    "KUBECONFIG",
}

#: The variables the contract (DESIGN.md) and the Go source name, and the
#: extensions.
EXPECTED_NAMES = set(SAMPLES)


def test_env_vars_are_exactly_the_expected_ones():
    names = [var.name for var in ENV_VARS]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_NAMES


def test_every_config_field_but_manifests_comes_from_a_variable():
    set_by_env = {var.config_field for var in ENV_VARS}
    assert {f.name for f in attrs.fields(Config)} - set_by_env == {"manifests"}


@pytest.mark.parametrize("var", ENV_VARS, ids=lambda var: var.name)
def test_every_variable_is_read(var, tmp_path):
    text, expected = SAMPLES[var.name]
    if var.name == "KEDA_HTTP_TLS_CA_DIRS":  # folders must exist and hold a CA
        text = ca_dir(tmp_path / "ca", trustme.CA())
        expected = (text,)
    config = load_config({**PORTS, var.name: text})
    assert getattr(config, var.config_field) == expected


@pytest.mark.parametrize(
    "var", [v for v in ENV_VARS if v.name not in FREE_TEXT], ids=lambda var: var.name
)
def test_every_typed_variable_is_validated(var):
    error = error_for({var.name: "not valid!"})
    assert (error.name, error.value) == (var.name, "not valid!")


def test_meanings_fit_a_table_row():
    for var in ENV_VARS:
        assert var.meaning and "|" not in var.meaning and "\n" not in var.meaning


def test_docs_mention_every_variable():
    docs = DOCS.read_text(encoding="utf-8")
    missing = [var.name for var in ENV_VARS if var.name not in docs]
    assert missing == []


def test_docs_table_is_generated_from_env_vars():
    """Edit ENV_VARS, then paste env_table_markdown() into the docs."""
    assert env_table_markdown() in DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize("text, reason", [
    ("api-key,api-key", "api-key listed more than once"),
    (" , ", "expected comma-separated plugin names"),
    ("api key", "expected a plugin name"),
])
def test_request_steps_name_each_plugin_once(text, reason):
    error = error_for({"KEDA_HTTP_REQUEST_STEPS": text})
    assert error.name == "KEDA_HTTP_REQUEST_STEPS" and reason in str(error)
