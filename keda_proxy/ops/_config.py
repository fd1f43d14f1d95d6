"""
The interceptor's configuration, read from the same environment variables as
the Go interceptor (same names, defaults and meaning) so that our image is a
drop-in replacement.

L{ENV_VARS} is the single description of every variable: L{load_config}
parses from it, L{Config}'s defaults are parsed from its default texts, and
``docs/configuration.md`` carries the table L{env_table_markdown} renders
from it (a test keeps the two equal).  An invalid value stops startup with a
one-line L{ConfigError} naming the variable and the value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, fields, frozen
from twisted.logger import Logger, LogLevel

from keda_proxy.state._duration import parse_duration

_log = Logger()

#: Cipher suites Go's C{tls.CipherSuites()} accepts by name (the secure set,
#: as of Go 1.25), mapped to their OpenSSL names for the TLS setup.
GO_CIPHER_SUITES: Mapping[str, str] = {
    "TLS_AES_128_GCM_SHA256": "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384": "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256": "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}

#: Curve names the Go interceptor accepts (Go constant and standard names),
#: mapped to OpenSSL curve names.
GO_CURVES: Mapping[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
    "X25519MLKEM768": "X25519MLKEM768",
    "P-256": "prime256v1",
    "P-384": "secp384r1",
    "P-521": "secp521r1",
}

#: TLS versions the Go interceptor accepts, in order.
TLS_VERSIONS = ("1.2", "1.3")

#: How v0.16 spells them (compared case-insensitively), to the versions.
TLS_VERSION_NAMES: Mapping[str, str] = {
    "1.2": "1.2",
    "tls12": "1.2",
    "1.3": "1.3",
    "tls13": "1.3",
}

#: Curves not every OpenSSL has: checked against the one in use at startup.
PROBED_CURVES = frozenset({"X25519MLKEM768"})

#: Trace exporters Go accepts (compared case-insensitively).
TRACES_PROTOCOLS = ("console", "http/protobuf", "grpc")


class ConfigError(Exception):
    """An invalid or missing setting; C{str()} is one line for the operator."""

    def __init__(self, name: str, value: str | None, reason: str) -> None:
        super().__init__(name, value, reason)
        self.name = name
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        if self.value is None:
            return f"missing required {self.name} ({self.reason})"
        return f"invalid value for {self.name}: {_quote(self.value)} ({self.reason})"


def _quote(text: str) -> str:
    """Double-quote, escaping anything that could break the line."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return '"' + "".join(out) + '"'


# Parsers: text -> value, raising ValueError(reason) on bad input.

_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _port(text: str) -> int:
    if not _INT.fullmatch(text) or not 0 <= int(text) <= 65535:
        raise ValueError("expected a port number from 0 to 65535")
    return int(text)


def _count(text: str) -> int:
    if not _INT.fullmatch(text) or int(text) < 0:
        raise ValueError("expected a non-negative whole number")
    return int(text)


def _bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError('expected a boolean such as "true" or "false"')


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ValueError('expected a Go duration such as "500ms"') from None
    if seconds < 0:
        raise ValueError("expected a duration that is not negative")
    return seconds


def _text(text: str) -> str:
    return text


def _plugin_name(text: str) -> str:
    """A plugin's name: letters, digits, ``-``, ``_`` and ``.``."""
    if not text or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in text):
        raise ValueError("expected a plugin name (letters, digits, -, _ and .)")
    return text


def _plugin_names(text: str) -> tuple[str, ...]:
    """Comma-separated plugin names, each at most once."""
    names = tuple(_plugin_name(name) for name in _names(text))
    if text and not names:
        raise ValueError("expected comma-separated plugin names")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed more than once")
    return names


def _optional_text(text: str) -> str | None:
    return text or None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _tls_version(text: str) -> str:
    if not text:
        return text
    try:
        return TLS_VERSION_NAMES[text.lower()]
    except KeyError:
        raise ValueError('expected "1.2"/"TLS12" or "1.3"/"TLS13"') from None


def _cipher_suites(text: str) -> tuple[str, ...]:
    names = _names(text)
    for name in names:
        if name not in GO_CIPHER_SUITES:
            raise ValueError(f"unknown cipher suite {name}")
    return names


def _curves(text: str) -> tuple[str, ...]:
    names = _names(text)
    for name in names:
        if name not in GO_CURVES:
            raise ValueError(f"unknown curve {name}")
        if name in PROBED_CURVES:
            _check_group(name)
    return names


def _check_group(name: str) -> None:
    """Go always has C{name}; our OpenSSL may not: refuse it at startup."""
    from keda_proxy import _tls as tls  # lazily: OpenSSL, and tls imports this module

    if not tls.group_supported(GO_CURVES[name]):
        raise ValueError(
            f"{name} is not supported by this interceptor's OpenSSL "
            f"({tls.OPENSSL_VERSION}); it needs OpenSSL 3.5 or later"
        )


def _folders(text: str) -> tuple[str, ...]:
    names = _names(text)
    if text and not names:
        raise ValueError("expected comma-separated folders of PEM CA certificates")
    return names


def _traces_protocol(text: str) -> str:
    if text.lower() not in TRACES_PROTOCOLS:
        raise ValueError('expected "console", "http/protobuf" or "grpc"')
    return text


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def parse_bind_address(text: str) -> tuple[str, int]:
    """C{host:port} as Go's C{net.Listen} takes it: (host, port), the host
    empty for every address (C{:6060}); an IPv6 host in brackets
    (C{[::1]:6060}); the port a number from 0 to 65535.

    @raise ValueError: with what was expected.
    """
    import ipaddress

    host, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError('expected host:port, such as "127.0.0.1:6060" or ":6060"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError('too many colons: write an IPv6 address in brackets, "[::1]:6060"')
    elif host and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not an IP address or host name")
    if not _INT.fullmatch(port) or port[0] in "+-" or not 0 <= int(port) <= 65535:
        raise ValueError("expected a port number from 0 to 65535 after the colon")
    return host, int(port)


def _bind_address(text: str) -> str:
    if text:
        parse_bind_address(text)
    return text


def _above_zero(value: Any) -> bool:
    return value > 0


def _always(value: Any) -> bool:
    return True


@frozen
class EnvVar:
    """One environment variable: what it sets, its default and its meaning.

    C{parse} turns the text into the L{Config} value, raising L{ValueError}
    with what was expected; C{replaced_by} names the current variable that a
    deprecated one stands in for, and C{wins_if} tells, from its parsed
    value, whether it then overrides that variable (the timeouts: when above
    0; the TLS policy names: whenever set, as in v0.16).
    """

    name: str
    config_field: str
    default: str
    parse: Callable[[str], Any] = field(repr=False)
    meaning: str = ""
    required: bool = False
    replaced_by: str | None = None
    wins_if: Callable[[Any], bool] = field(default=_above_zero, repr=False)


#: Every variable the interceptor reads, in documentation order.
# fmt: off

def _deprecated_tls(suffix: str, config_field: str, parse) -> "EnvVar":
    """A v0.15 ``KEDA_HTTP_PROXY_TLS_*`` policy name: it wins over v0.16's
    ``KEDA_HTTP_TLS_*`` when set, with a warning, as in Go."""
    new = f"KEDA_HTTP_TLS_{suffix}"
    return EnvVar(f"KEDA_HTTP_PROXY_TLS_{suffix}", config_field, "", parse,
                  f"Deprecated name of `{new}`; when set it wins and a warning is logged.",
                  replaced_by=new, wins_if=_always)

ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("KEDA_HTTP_PROXY_PORT", "proxy_port", "", _port,
           "Port of the plain-HTTP proxy server that receives user traffic.",
           required=True),
    EnvVar("KEDA_HTTP_ADMIN_PORT", "admin_port", "", _port,
           "Port of the admin server (`/queue`, `/livez`, `/readyz`) that the KEDA "
           "external scaler polls.",
           required=True),
    EnvVar("KEDA_HTTP_PROXY_TLS_PORT", "proxy_tls_port", "8443", _port,
           "Port of the TLS proxy server, served alongside the plain one when "
           "`KEDA_HTTP_PROXY_TLS_ENABLED` is true."),
    EnvVar("KEDA_HTTP_WATCH_NAMESPACE", "watch_namespace", "", _text,
           "Namespace to watch for routes, Services, EndpointSlices and ConfigMaps; "
           "empty watches all namespaces."),
    EnvVar("KEDA_HTTP_SCALER_CONFIG_MAP_INFORMER_RSYNC_PERIOD", "resync_period", "60m",
           _duration,
           "How often the Kubernetes watches resync their caches with a full list."),
    EnvVar("KEDA_HTTP_REQUEST_TIMEOUT", "request_timeout", "0s", _duration,
           "Total deadline from request arrival to response completion; 0 means "
           "none."),
    EnvVar("KEDA_HTTP_RESPONSE_HEADER_TIMEOUT", "response_header_timeout", "300s",
           _duration,
           "How long to wait for the upstream's response headers once the request "
           "is sent; 0 disables it."),
    EnvVar("KEDA_HTTP_READINESS_TIMEOUT", "readiness_timeout", "0s", _duration,
           "How long a request waits for its target to have a ready endpoint; 0 "
           "means bounded only by the request timeout (30s when the route has a "
           "fallback)."),
    EnvVar("KEDA_HTTP_CONNECT_TIMEOUT", "connect_timeout", "500ms", _duration,
           "Timeout of each upstream dial attempt; failed dials are retried every "
           "50ms until the request deadline (1m when there is none)."),
    EnvVar("KEDA_HTTP_MAX_IDLE_CONNS", "max_idle_conns", "1000", _count,
           "Idle upstream connections kept in the pool across all backends; 0 means "
           "no limit. One returned above a bound is kept 1 s for the next burst and "
           "closed if still surplus."),
    EnvVar("KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST", "max_idle_conns_per_host", "200",
           _count,
           "Idle upstream connections kept per backend address; 0 means 2, Go's "
           "default. One returned above it is kept 1 s and closed if still surplus."),
    EnvVar("KEDA_HTTP_PROXY_TLS_ENABLED", "proxy_tls_enabled", "false", _bool,
           "Also serve the proxy over TLS on `KEDA_HTTP_PROXY_TLS_PORT`; requests "
           "received there are forwarded upstream over TLS."),
    EnvVar("KEDA_HTTP_PROXY_TLS_CERT_PATH", "tls_cert_path", "/certs/tls.crt", _text,
           "Default server certificate (PEM) of the TLS proxy."),
    EnvVar("KEDA_HTTP_PROXY_TLS_KEY_PATH", "tls_key_path", "/certs/tls.key", _text,
           "Private key (PEM) of the default server certificate."),
    EnvVar("KEDA_HTTP_PROXY_TLS_CERT_STORE_PATHS", "tls_cert_store_paths", "", _names,
           "Comma-separated folders of certificate/key pairs, chosen by SNI and "
           "also trusted for upstream verification."),
    EnvVar("KEDA_HTTP_TLS_SKIP_VERIFY", "tls_skip_verify", "false", _bool,
           "Skip verification of upstream TLS certificates."),
    EnvVar("KEDA_HTTP_TLS_MIN_VERSION", "tls_min_version", "", _tls_version,
           'Lowest TLS version, on the TLS listener and towards upstreams: "1.2" or '
           '"TLS12", "1.3" or "TLS13", in any case; empty means 1.2.'),
    EnvVar("KEDA_HTTP_TLS_MAX_VERSION", "tls_max_version", "", _tls_version,
           'Highest TLS version, on the TLS listener and towards upstreams: "1.2" '
           'or "TLS12", "1.3" or "TLS13", in any case; empty means the highest '
           "supported."),
    EnvVar("KEDA_HTTP_TLS_CIPHER_SUITES", "tls_cipher_suites", "", _cipher_suites,
           "Comma-separated TLS cipher suite names as Go spells them, on both "
           "sides; empty means Go's defaults."),
    EnvVar("KEDA_HTTP_TLS_CURVE_PREFERENCES", "tls_curve_preferences", "",
           _curves,
           "Comma-separated key-exchange groups as Go names them (e.g. "
           "`X25519,CurveP256`; `X25519MLKEM768` needs OpenSSL 3.5 or later), on "
           "both sides; empty means the defaults."),
    EnvVar("KEDA_HTTP_TLS_CA_DIRS", "tls_ca_dirs", "", _folders,
           "Comma-separated folders of PEM CA certificates trusted for upstream TLS "
           "on top of the system CAs; every file directly in them must hold one "
           "(sub-folders and names starting with `..` are skipped), and at least "
           "one must be found."),
    EnvVar("KEDA_HTTP_ENABLE_COLD_START_HEADER", "enable_cold_start_header", "true",
           _bool,
           "Add the `X-KEDA-HTTP-Cold-Start` header to proxied responses."),
    EnvVar("KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS", "cold_start_max_pending_requests",
           "0", _count,
           "How many requests this interceptor holds per route while the route's "
           "target has no ready endpoint; more get 503 (or the placeholder, with "
           "`overflow: Placeholder`). A route's `coldStart.maxPendingRequests` wins; "
           "0 means no limit."),
    EnvVar("KEDA_HTTP_LOG_REQUESTS", "log_requests", "false", _bool,
           "Log every proxied request."),
    EnvVar("KEDA_HTTP_DIRECT_POD_ROUTING", "direct_pod_routing", "true", _bool,
           "Send requests to a ready pod's ip:port instead of the Service's "
           "ClusterIP, bypassing kube-proxy and what the Service layer adds "
           "(NetworkPolicy on the ClusterIP, session affinity, topology-aware "
           "routing); false forwards through the Service."),
    EnvVar("KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS", "direct_pod_warm_connections", "0",
           _count,
           "With direct-pod routing, how many connections to open to each starting "
           "(not yet ready) pod of a Service while requests wait for it, so that "
           "they need no dial once it is ready; 0 (the default) opens none. Only for "
           "servers that take idle connections without tying up a worker. An "
           "extension: the Go interceptor has no such setting."),
    EnvVar("KEDA_HTTP_ENDPOINT_SELECTOR", "endpoint_selector", "random", _plugin_name,
           "With direct-pod routing, how a ready pod is chosen for a request: "
           "`random` (as Go), `round-robin`, `least-pending` (the fewer requests in "
           "flight of two pods drawn at random), or the name of an installed "
           "selector plugin; an unknown name stops start-up. An extension."),
    EnvVar("KEDA_HTTP_REQUEST_STEPS", "request_steps", "", _plugin_names,
           "Comma-separated names of installed request-step plugins, run in this order "
           "on every routed request that no static route answers, before it is counted "
           "in `/queue` or waits for a cold start: a request a step refuses neither "
           "counts nor wakes its workload. Empty runs none; an unknown name stops "
           "start-up. An extension."),
    EnvVar("KEDA_HTTP_DRAIN_TIMEOUT", "drain_timeout", "30s", _duration,
           "How long in-flight requests may finish after the proxy stops listening "
           "at shutdown; 0 waits indefinitely."),
    EnvVar("KEDA_HTTP_SHUTDOWN_DELAY", "shutdown_delay", "5s", _duration,
           "Time between SIGTERM and closing the proxy listener, while `/readyz` "
           "returns 503 and requests are still served."),
    EnvVar("OTEL_PROM_EXPORTER_ENABLED", "prom_exporter_enabled", "true", _bool,
           "Serve Prometheus metrics on `/metrics`."),
    EnvVar("OTEL_PROM_EXPORTER_PORT", "prom_exporter_port", "2223", _port,
           "Port of the Prometheus metrics server."),
    EnvVar("OTEL_EXPORTER_OTLP_METRICS_ENABLED", "otlp_metrics_enabled", "false", _bool,
           "Push the `/metrics` instruments over OTLP every "
           "`OTEL_METRIC_EXPORT_INTERVAL` ms (60 s); the exporter reads the standard "
           "`OTEL_EXPORTER_OTLP_*` variables (protocol `http/protobuf` unless "
           "`OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` says `grpc`)."),
    EnvVar("OTEL_EXPORTER_OTLP_TRACES_ENABLED", "otlp_traces_enabled", "false", _bool,
           "Trace every request (a server span, the cold-start wait, the upstream "
           "call) and export the spans over OTLP; the exporter reads the standard "
           "`OTEL_EXPORTER_OTLP_*` variables and `OTEL_RESOURCE_ATTRIBUTES`."),
    EnvVar("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "otlp_traces_protocol", "console",
           _traces_protocol,
           'Trace exporter: "console" (standard output), "http/protobuf" or "grpc".'),
    EnvVar("PROFILING_BIND_ADDRESS", "profiling_bind_address", "", _bind_address,
           "`host:port` (`127.0.0.1:6060`, `:6060`, `[::1]:6060`) where the profiling "
           "endpoint listens, at Go's `/debug/pprof/` paths; off when empty."),
    EnvVar("KUBECONFIG", "kubeconfig", "", _optional_text,
           "kubeconfig file used to reach the API server; when unset, the "
           "in-cluster service account is used."),
    EnvVar("KEDA_CONDITION_WAIT_TIMEOUT", "readiness_timeout", "", _duration,
           "Deprecated name of `KEDA_HTTP_READINESS_TIMEOUT`; when above 0 it wins "
           "and a warning is logged.",
           replaced_by="KEDA_HTTP_READINESS_TIMEOUT"),
    EnvVar("KEDA_RESPONSE_HEADER_TIMEOUT", "response_header_timeout", "", _duration,
           "Deprecated name of `KEDA_HTTP_RESPONSE_HEADER_TIMEOUT`; when above 0 it "
           "wins and a warning is logged.",
           replaced_by="KEDA_HTTP_RESPONSE_HEADER_TIMEOUT"),
    EnvVar("KEDA_HTTP_PROXY_TLS_SKIP_VERIFY", "tls_skip_verify", "", _bool,
           "Deprecated name of `KEDA_HTTP_TLS_SKIP_VERIFY`; when set (even to "
           "false) it wins and a warning is logged.",
           replaced_by="KEDA_HTTP_TLS_SKIP_VERIFY", wins_if=_always),
    _deprecated_tls("MIN_VERSION", "tls_min_version", _tls_version),
    _deprecated_tls("MAX_VERSION", "tls_max_version", _tls_version),
    _deprecated_tls("CIPHER_SUITES", "tls_cipher_suites", _cipher_suites),
    _deprecated_tls("CURVE_PREFERENCES", "tls_curve_preferences", _curves),
)
# fmt: on

_CURRENT = {var.config_field: var for var in ENV_VARS if var.replaced_by is None}


def _default(field_name: str) -> Any:
    var = _CURRENT[field_name]
    return var.parse(var.default)


@frozen
class Config:
    """Everything the interceptor is configured with; durations in seconds.

    Build it with L{load_config}; the defaults are those of L{ENV_VARS}, so
    tests may also construct it directly with just the two ports.
    C{manifests} (a file or folder of YAML to serve from instead of a
    cluster) is set only from the command line.
    """

    proxy_port: int
    admin_port: int
    proxy_tls_port: int = _default("proxy_tls_port")
    watch_namespace: str = _default("watch_namespace")
    resync_period: float = _default("resync_period")
    request_timeout: float = _default("request_timeout")
    response_header_timeout: float = _default("response_header_timeout")
    readiness_timeout: float = _default("readiness_timeout")
    connect_timeout: float = _default("connect_timeout")
    max_idle_conns: int = _default("max_idle_conns")
    max_idle_conns_per_host: int = _default("max_idle_conns_per_host")
    proxy_tls_enabled: bool = _default("proxy_tls_enabled")
    tls_cert_path: str = _default("tls_cert_path")
    tls_key_path: str = _default("tls_key_path")
    tls_cert_store_paths: tuple[str, ...] = _default("tls_cert_store_paths")
    tls_skip_verify: bool = _default("tls_skip_verify")
    tls_min_version: str = _default("tls_min_version")
    tls_max_version: str = _default("tls_max_version")
    tls_cipher_suites: tuple[str, ...] = _default("tls_cipher_suites")
    tls_curve_preferences: tuple[str, ...] = _default("tls_curve_preferences")
    tls_ca_dirs: tuple[str, ...] = _default("tls_ca_dirs")
    enable_cold_start_header: bool = _default("enable_cold_start_header")
    cold_start_max_pending_requests: int = _default("cold_start_max_pending_requests")
    log_requests: bool = _default("log_requests")
    direct_pod_routing: bool = _default("direct_pod_routing")
    direct_pod_warm_connections: int = _default("direct_pod_warm_connections")
    endpoint_selector: str = _default("endpoint_selector")
    request_steps: tuple[str, ...] = _default("request_steps")
    drain_timeout: float = _default("drain_timeout")
    shutdown_delay: float = _default("shutdown_delay")
    prom_exporter_enabled: bool = _default("prom_exporter_enabled")
    prom_exporter_port: int = _default("prom_exporter_port")
    otlp_metrics_enabled: bool = _default("otlp_metrics_enabled")
    otlp_traces_enabled: bool = _default("otlp_traces_enabled")
    otlp_traces_protocol: str = _default("otlp_traces_protocol")
    profiling_bind_address: str = _default("profiling_bind_address")
    kubeconfig: str | None = _default("kubeconfig")
    manifests: str | None = None


_FIELDS = frozenset(f.name for f in fields(Config))


def _parse(var: EnvVar, text: str) -> Any:
    try:
        return var.parse(text)
    except ValueError as e:
        raise ConfigError(var.name, text, str(e)) from None


def load_config(
    environ: Mapping[str, str], log: Logger | None = None, **overrides: Any
) -> Config:
    """Read the configuration from C{environ}, then apply C{overrides}.

    C{overrides} are L{Config} field names with typed values, as the twistd
    command line gives them; C{None} means "not given".  Given values win
    over the environment, whose variable is then not read at all.  An empty
    variable counts as unset, as with the Go interceptor's env library.

    @raise ConfigError: a variable is missing or invalid.
    @raise TypeError: an override names no L{Config} field.
    """
    log = _log if log is None else log
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown configuration override(s): {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}

    values: dict = {}
    sources: dict = {}  # field -> (variable, text) it was set from
    deprecated = []
    for var in ENV_VARS:
        if var.config_field in given:
            continue
        text = environ.get(var.name, "")
        if text == "":
            if var.required:
                raise ConfigError(var.name, None, _parse_hint(var))
            continue
        value = _parse(var, text)
        if var.replaced_by is None:
            values[var.config_field] = value
            sources[var.config_field] = (var.name, text)
        else:
            deprecated.append((var, value, text))

    for var, value, text in deprecated:
        if var.wins_if(value):
            log.emit(
                LogLevel.warn,
                "{old} is deprecated, use {new} instead",
                old=var.name,
                new=var.replaced_by,
            )
            values[var.config_field] = value
            sources[var.config_field] = (var.name, text)

    for name, value in given.items():
        if name in _CURRENT and _CURRENT[name].parse is _port:
            _check_port_override(name, value)
    values.update(given)

    config = Config(**values)
    _check_tls_range(config, sources)
    _check_ca_dirs(config, sources)
    return config


def _parse_hint(var: EnvVar) -> str:
    """What a missing required variable should hold."""
    try:
        var.parse("")
    except ValueError as e:
        return str(e)
    return "must be set"


def _check_port_override(name: str, value: Any) -> None:
    """Command-line ports arrive as ints; still, 70000 must not reach listen()."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(
            _CURRENT[name].name,
            str(value),
            "from the command line; expected a port number from 0 to 65535",
        )


def _source(sources: Mapping, config: Config, field_name: str) -> tuple[str, str]:
    """The variable (old or new name) and text C{field_name} came from."""
    default = (_CURRENT[field_name].name, str(getattr(config, field_name)))
    return sources.get(field_name, default)


def _check_tls_range(config: Config, sources: Mapping) -> None:
    low, high = config.tls_min_version, config.tls_max_version
    if low and high and TLS_VERSIONS.index(low) > TLS_VERSIONS.index(high):
        low_var, low_text = _source(sources, config, "tls_min_version")
        high_var, high_text = _source(sources, config, "tls_max_version")
        raise ConfigError(low_var, low_text, f"above {high_var} {_quote(high_text)}")


def _check_ca_dirs(config: Config, sources: Mapping) -> None:
    """Read the CA folders now, as v0.16 does at startup whether or not TLS
    is on, so that a bad folder or file stops startup with one line."""
    if not config.tls_ca_dirs:
        return
    from keda_proxy._tls import ca_dir_certificates  # lazily: tls imports us

    try:
        ca_dir_certificates(config.tls_ca_dirs)
    except ValueError as e:
        raise ConfigError(*_source(sources, config, "tls_ca_dirs"), str(e)) from None


def env_table_markdown() -> str:
    """The Markdown table of L{ENV_VARS} that docs/configuration.md carries."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for var in ENV_VARS:
        if var.required:
            default = "*required*"
        elif var.default:
            default = f"`{var.default}`"
        else:
            default = "*(empty)*"
        rows.append(f"| `{var.name}` | {default} | {var.meaning} |")
    return "\n".join(rows) + "\n"
