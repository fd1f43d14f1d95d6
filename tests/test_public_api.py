"""
The public API, pinned: every module whose dotted name has no part that
starts with ``_`` is public, declares ``__all__``, and exports exactly
what is listed here.  Internals live in private modules.  Changing the
public API means changing this list, on purpose.
"""

import importlib
import pkgutil

import pytest

import keda_proxy
import keda_proxy.interfaces

PUBLIC = {
    "keda_proxy": ["__version__"],
    "keda_proxy.interfaces": [
        "IBodyConsumer", "IConnectionOwner", "IDownstreamExchange", "IEndpointSelector",
        "IEndpointSelectorPlugin",
        "IHeldRequest", "IRequestBody", "IRequestStep", "IRequestStepPlugin", "IResponseSink",
        "IRouter", "IRoutingPlugin", "IServiceResolver", "IStateSink", "IStateSource",
        "IUpstreamExchange"],
    "keda_proxy.steps": ["InFlight", "Pipeline", "ProxySettings", "RequestContext",
                         "build_request_path", "write_error"],
    "keda_proxy.downstream": ["HTTP1ServerFactory", "ReverseProxy", "listen_backlog"],
    "keda_proxy.upstream": ["ConnectionPool", "ResponseHead", "UpstreamConnection",
                            "UpstreamTLS"],
    "keda_proxy.state": ["ConfigMap", "EndpointSlice", "HeaderMatch", "RequestFacts", "Route",
                         "RoutingRule", "Service", "ServiceRef", "Snapshot", "StateStore",
                         "StaticResponse", "StaticRoute"],
    "keda_proxy.ops": ["Config", "ConfigError", "load_config"],
    "keda_proxy.wire": [],
    "keda_proxy.embedding": ["ConfigError", "ManifestError", "build_resource"],
    "keda_proxy.testing": ["POD_IP", "ProxyHarness", "simple_route"],
    "keda_proxy.tap": ["Options", "makeService"],
    "keda_proxy.epolldispatch": ["LeanEPollReactor", "install"],
    "keda_proxy.plugins": [],
    "keda_proxy.plugins.builtin_selectors": ["leastPending", "random", "roundRobin"],
}


def public_modules():
    names = ["keda_proxy"]
    for info in pkgutil.walk_packages(keda_proxy.__path__, "keda_proxy."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return sorted(names)


def test_every_public_module_is_pinned():
    assert public_modules() == sorted(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_a_public_module_exports_exactly_its_pinned_names(name):
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(PUBLIC[name])
    for attribute in module.__all__:
        assert hasattr(module, attribute), f"{name}.{attribute}"


def test_every_interface_is_declared_in_keda_proxy_interfaces():
    """One place to read every replaceable part."""
    import inspect

    from zope.interface.interface import InterfaceClass

    elsewhere = []
    for info in pkgutil.walk_packages(keda_proxy.__path__, "keda_proxy."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, InterfaceClass) and value.__module__ == info.name \
                    and info.name != "keda_proxy.interfaces":
                elsewhere.append(f"{info.name}.{name}")
    assert elsewhere == []
    assert inspect.getmodule(keda_proxy.interfaces.IRequestStep) is keda_proxy.interfaces
