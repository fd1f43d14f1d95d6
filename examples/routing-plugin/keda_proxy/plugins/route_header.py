"""
An example third-party routing plugin: ``X-Route: namespace/name`` picks a
route by name, for previews and debugging.

It ships as its own distribution (see setup.cfg beside this folder) that
installs only this module into the ``keda_proxy.plugins`` plugin package,
never an ``__init__.py``.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from keda_proxy.interfaces import IRoutingPlugin


@implementer(IPlugin, IRoutingPlugin)
class RouteHeaderPlugin:
    name = "route-header"
    priority = 100

    def route(self, request, snapshot):
        wanted = request.header_values("x-route")
        if len(wanted) == 1:
            return snapshot.routes.get(wanted[0])
        return None


routeHeader = RouteHeaderPlugin()
