"""Configuration from the Go interceptor's environment variables."""

from pathlib import Path

import attrs
import pytest
from twisted.logger import Logger, LogLevel, formatEvent

from keda_proxy.config import (
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
        "enable_cold_start_header": True,
        "cold_start_max_pending_requests": 0,  # no limit
        "log_requests": False,
        "direct_pod_routing": True,  # v0.16's default
        "direct_pod_warm_connections": 0,  # an extension
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


# TLS settings


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_versions_valid(version):
    config = load(
        KEDA_HTTP_PROXY_TLS_MIN_VERSION=version, KEDA_HTTP_PROXY_TLS_MAX_VERSION=version
    )
    assert (config.tls_min_version, config.tls_max_version) == (version, version)


@pytest.mark.parametrize(
    "name", ["KEDA_HTTP_PROXY_TLS_MIN_VERSION", "KEDA_HTTP_PROXY_TLS_MAX_VERSION"]
)
@pytest.mark.parametrize("text", ["1.1", "1.0", "TLS1.3", "1.4", "13"])
def test_tls_versions_invalid(name, text):
    error = error_for({name: text})
    assert (error.name, error.value) == (name, text)


def test_tls_min_above_max_is_rejected():
    error = error_for(
        {
            "KEDA_HTTP_PROXY_TLS_MIN_VERSION": "1.3",
            "KEDA_HTTP_PROXY_TLS_MAX_VERSION": "1.2",
        }
    )
    assert error.name == "KEDA_HTTP_PROXY_TLS_MIN_VERSION"
    assert "KEDA_HTTP_PROXY_TLS_MAX_VERSION" in str(error)


def test_tls_only_one_bound_is_fine():
    assert load(KEDA_HTTP_PROXY_TLS_MIN_VERSION="1.3").tls_max_version == ""


def test_cipher_suites_are_go_names():
    text = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,"
    config = load(KEDA_HTTP_PROXY_TLS_CIPHER_SUITES=text)
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
    error = error_for({"KEDA_HTTP_PROXY_TLS_CIPHER_SUITES": text})
    assert error.name == "KEDA_HTTP_PROXY_TLS_CIPHER_SUITES"
    assert f"unknown cipher suite {name}" in str(error)


def test_curve_preferences():
    config = load(KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES="X25519, CurveP256,P-384")
    assert config.tls_curve_preferences == ("X25519", "CurveP256", "P-384")


def test_curve_preferences_unknown_name():
    error = error_for({"KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES": "X25519,P-999"})
    assert "unknown curve P-999" in str(error)


# Accepted-but-unsupported settings


def test_traces_protocol_is_case_insensitive():
    assert (
        load(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="GRPC").otlp_traces_protocol == "GRPC"
    )


def test_traces_protocol_invalid():
    error = error_for({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "zipkin"})
    assert error.name == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_METRICS_ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENABLED", "true"),
        ("PROFILING_BIND_ADDRESS", ":6060"),
    ],
)
def test_unsupported_settings_warn(name, value):
    log, events = capture()
    load(log=log, **{name: value})
    [message] = warnings(events)
    assert name in message


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
    "KEDA_HTTP_PROXY_TLS_SKIP_VERIFY": ("true", True),
    "KEDA_HTTP_PROXY_TLS_MIN_VERSION": ("1.2", "1.2"),
    "KEDA_HTTP_PROXY_TLS_MAX_VERSION": ("1.3", "1.3"),
    "KEDA_HTTP_PROXY_TLS_CIPHER_SUITES": (
        "TLS_AES_128_GCM_SHA256",
        ("TLS_AES_128_GCM_SHA256",),
    ),
    "KEDA_HTTP_PROXY_TLS_CURVE_PREFERENCES": ("X25519", ("X25519",)),
    "KEDA_HTTP_ENABLE_COLD_START_HEADER": ("false", False),
    "KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS": ("500", 500),
    "KEDA_HTTP_LOG_REQUESTS": ("true", True),
    "KEDA_HTTP_DIRECT_POD_ROUTING": ("false", False),
    "KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS": ("64", 64),  # an extension
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
}

#: Variables whose every text is valid.
FREE_TEXT = {
    "KEDA_HTTP_WATCH_NAMESPACE",
    "KEDA_HTTP_PROXY_TLS_CERT_PATH",
    "KEDA_HTTP_PROXY_TLS_KEY_PATH",
    "KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS",
    "PROFILING_BIND_ADDRESS",
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
def test_every_variable_is_read(var):
    text, expected = SAMPLES[var.name]
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
