"""
The interceptor's request path inside another Twisted web application.

L{build_resource} gives a twisted.web resource that routes, holds during
cold starts and forwards exactly as the interceptor does, with routes and
endpoints from manifest files, and the Service that keeps them current.
Serve the resource from any C{twisted.web.server.Site}, or put it under a
path of an existing resource tree.  A stock C{Site} reads each request
body whole before the resource sees it (in memory, or a temporary file
for large ones); responses stream back as they arrive.
"""

from __future__ import annotations

from typing import Mapping, Optional

from keda_proxy._app import Interceptor, InterceptorService
from keda_proxy.downstream._resource import ReverseProxy
from keda_proxy.ops._config import ConfigError, load_config
from keda_proxy.state._manifests import ManifestError, ManifestSource

#: What the settings default to when embedded: the ports are the host
#: application's business, and no Kubernetes Service needs time to drop
#: this process before it stops.
_EMBEDDED = {"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0",
             "KEDA_HTTP_SHUTDOWN_DELAY": "0s"}


def build_resource(manifests, reactor=None, environ: Optional[Mapping[str, str]] = None,
                   request_steps=None, routing_plugins=None):
    """The proxy as a resource, and the Service that feeds it.

    @param manifests: a YAML/JSON file or folder of InterceptorRoutes,
        HTTPScaledObjects, Services, EndpointSlices and ConfigMaps, re-read
        when it changes.
    @param reactor: the reactor to run on (the global one by default).
    @param environ: settings by their environment variable names
        (docs/configuration.md), such as C{{"KEDA_HTTP_REQUEST_TIMEOUT":
        "30s"}}; C{os.environ} reads the process's own.
    @param request_steps: L{keda_proxy.interfaces.IRequestStepPlugin}s to
        run, in order; None: those C{KEDA_HTTP_REQUEST_STEPS} names.
    @param routing_plugins: L{keda_proxy.interfaces.IRoutingPlugin}s; None:
        every installed one.
    @return: C{(resource, service)}.  Start the service before serving
        (C{service.startService()}, or give it a parent): it reads the
        manifests, then watches them.  Stopping it waits for requests in
        flight (up to C{KEDA_HTTP_DRAIN_TIMEOUT}) and closes idle upstream
        connections.
    @raise ConfigError: an invalid setting (the message is one line).
    @raise ManifestError: no such manifest path (one line too).
    """
    if reactor is None:
        from twisted.internet import reactor
    config = load_config({**_EMBEDDED, **(environ or {})})
    interceptor = Interceptor.build(reactor, config, ManifestSource.kinds,
                                    plugins=routing_plugins, request_steps=request_steps)
    service = InterceptorService(interceptor)
    ManifestSource(path=manifests, sink=interceptor.store, clock=reactor
                   ).setServiceParent(service)
    return ReverseProxy(interceptor.pipeline), service


__all__ = ["ConfigError", "ManifestError", "build_resource"]
