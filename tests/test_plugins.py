"""
Third-party routing plugins: discovered through the Twisted plugin system
from a separate folder on the path, and consulted before the table.
"""

from pathlib import Path

from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from keda_proxy.interfaces import IEndpointSelector, IRouter, IRoutingPlugin
from keda_proxy.state._routing import RoutingTable
from keda_proxy.steps._pluginrouting import PluginRouter
from keda_proxy.steps._selection import RandomSelector
from tests.builders import endpoint_slice, load, route, service
from tests.netsupport import discovered_with
from tests.proxyfakes import Harness

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "routing-plugin"

DISCOVER = """
import json
from keda_proxy.steps._pluginrouting import discover_routing_plugins
print(json.dumps([[p.name, type(p).__module__] for p in discover_routing_plugins()]))
"""


def discover_with(pythonpath):
    return discovered_with(DISCOVER, pythonpath)


def test_example_plugin_is_discovered_from_a_separate_folder():
    assert discover_with([ROOT]) == []
    found = discover_with([ROOT, EXAMPLE])
    assert found == [["route-header", "keda_proxy.plugins.route_header"]]


def _load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "route_header_example", EXAMPLE / "keda_proxy" / "plugins" / "route_header.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.routeHeader


def test_example_plugin_provides_the_interfaces():
    plugin = _load_example()
    assert verifyObject(IRoutingPlugin, plugin)
    assert verifyObject(IPlugin, plugin)


def test_example_plugin_is_consulted_before_the_table():
    h = Harness(plugins=(_load_example(),))
    preview = route(name="preview", hosts=["preview.internal"])
    load(h.store, routes=[route(), preview], services=[service()], slices=[endpoint_slice()])
    h.get(extra=b"X-Route: default/preview\r\n")
    h.get(extra=b"X-Route: default/unknown\r\n")  # falls through to the table
    assert h.counter.get("default/preview").request_count == 1
    assert h.counter.get("default/web").request_count == 1


def test_components_provide_their_interfaces():
    h = Harness()
    assert verifyObject(IRouter, RoutingTable.build([route()]))
    assert verifyObject(IRouter, PluginRouter(h.store))
    assert verifyObject(IEndpointSelector, RandomSelector())


def test_store_provides_the_state_sink_interface():
    from keda_proxy.interfaces import IStateSink

    assert verifyObject(IStateSink, Harness().store)


def test_the_random_selector_picks_every_candidate_and_the_only_one():
    import random

    selector = RandomSelector(random.Random(7))
    pods = (("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80))
    assert {selector.select(pods, None) for _ in range(200)} == set(pods)
    assert selector.select(pods[:1], None) == pods[0]


def test_both_sides_of_an_exchange_provide_their_interfaces():
    from zope.interface.verify import verifyClass

    from keda_proxy.downstream._body import RequestBody
    from keda_proxy.downstream._http1 import HTTP1Exchange
    from keda_proxy.downstream._resource import _BufferedBody, _WebExchange
    from keda_proxy.interfaces import (
        IDownstreamExchange,
        IRequestBody,
        IRequestStep,
        IResponseSink,
        IUpstreamExchange,
    )
    from keda_proxy.steps import _admit, _await, _forward, _route, _select, _static
    from keda_proxy.upstream import UpstreamConnection

    assert verifyClass(IDownstreamExchange, HTTP1Exchange)
    assert verifyClass(IDownstreamExchange, _WebExchange)
    assert verifyClass(IRequestBody, RequestBody)
    assert verifyClass(IRequestBody, _BufferedBody)
    assert verifyClass(IUpstreamExchange, UpstreamConnection)
    assert verifyClass(IResponseSink, _forward._Attempt)
    for step in (_route.RouteRequest, _static.ServeStatic, _admit.Admit,
                 _await.AwaitReadiness, _select.SelectEndpoint, _forward.Forward):
        assert verifyClass(IRequestStep, step)
