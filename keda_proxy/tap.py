"""
``twistd keda-interceptor``: command-line options and the service maker.

Configuration comes from the Go interceptor's environment variables; the
few options here override them.  A bad value stops startup with one line
on stderr that names it, and exit status 1.
"""

from __future__ import annotations

import os
import sys

from twisted.python import usage

from keda_proxy.ops._descriptors import prepare_descriptors
from keda_proxy.ops._zaplog import ZapFlagError, ZapFlagOptions, with_zap_logging


def _port(text):
    return None if text is None else int(text)


class Options(ZapFlagOptions, usage.Options):
    synopsis = "[options]"
    longdesc = ("The KEDA HTTP add-on interceptor. Settings come from KEDA_HTTP_* "
                "environment variables (see docs/configuration.md); these options "
                "override them.")
    optParameters = [
        ["proxy-port", None, None, "Proxy port (overrides KEDA_HTTP_PROXY_PORT).", _port],
        ["admin-port", None, None, "Admin port (overrides KEDA_HTTP_ADMIN_PORT).", _port],
        ["metrics-port", None, None,
         "Prometheus port (overrides OTEL_PROM_EXPORTER_PORT).", _port],
        ["manifests", None, None,
         "A YAML/JSON file or folder of InterceptorRoutes, HTTPScaledObjects, Services, "
         "EndpointSlices and ConfigMaps to serve from instead of a cluster."],
        ["kubeconfig", None, None, "A kubeconfig file (overrides KUBECONFIG)."],
        ["interface", None, "", "Address to listen on (default: all IPv4 addresses)."],
    ]

    def parseOptions(self, options=None):
        # the --zap-* flags (ZapFlagOptions) as the Go interceptor's chart passes them
        try:
            super().parseOptions(options)
        except ZapFlagError as e:
            fail(str(e))


def fail(message: str) -> None:
    """Stop startup with one line, no traceback."""
    sys.stderr.write(f"keda-interceptor: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def makeService(options):
    from twisted.internet import reactor

    from keda_proxy._app import build_service
    from keda_proxy.ops._config import ConfigError, load_config

    try:
        config = load_config(
            os.environ,
            proxy_port=options["proxy-port"],
            admin_port=options["admin-port"],
            prom_exporter_port=options["metrics-port"],
            manifests=options["manifests"],
            kubeconfig=options["kubeconfig"],
        )
    except ConfigError as e:
        fail(str(e))
    server_tls = upstream_tls = None
    if config.proxy_tls_enabled:
        from keda_proxy._tls import TLSConfigError
        from keda_proxy.downstream._tls import ServerTLS
        from keda_proxy.upstream._tls import UpstreamTLS

        try:
            server_tls = ServerTLS.from_config(config)
            upstream_tls = UpstreamTLS.from_config(config)
        except TLSConfigError as e:
            fail(str(e))
    prepare_descriptors()  # before any thread starts
    from keda_proxy.steps._pluginsteps import UnknownRequestStep
    from keda_proxy.steps._selection import UnknownSelector

    try:
        service = build_service(reactor, config, _source_factory(reactor, config),
                                interface=options["interface"], server_tls=server_tls,
                                upstream_tls=upstream_tls)
    except (UnknownSelector, UnknownRequestStep) as e:
        fail(str(e))
    # with a --zap-* flag, twistd logs zap lines to stdout (keda_proxy.ops._zaplog)
    return with_zap_logging(service, options)


def _source_factory(reactor, config):
    """A function of the store that makes the configured source."""
    if config.manifests:
        from keda_proxy.state._manifests import ManifestError, ManifestSource

        def manifests(store):
            try:
                return ManifestSource(path=config.manifests, sink=store, clock=reactor)
            except ManifestError as e:
                fail(str(e))

        return manifests
    from keda_proxy.state._kube_source import KubeConfigError, KubernetesSource, load_api_client

    try:
        api_client = load_api_client(config.kubeconfig)
    except KubeConfigError as e:
        fail(f"{e} (or give --manifests PATH to serve from files)")
    return lambda store: KubernetesSource(
        sink=store, reactor=reactor, clock=reactor, api_client=api_client,
        namespace=config.watch_namespace, resync_period=config.resync_period)


__all__ = ["Options", "makeService"]
