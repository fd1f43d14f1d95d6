"""
The endpoint selectors that ship with the interceptor, as plugins of the
same interface a third party implements (see docs/plugins.md).
"""

from attrs import frozen
from twisted.plugin import IPlugin
from zope.interface import implementer

from keda_proxy.interfaces import IEndpointSelectorPlugin


@implementer(IPlugin, IEndpointSelectorPlugin)
@frozen
class _Builtin:
    name: str
    factory: str

    def selector(self):
        from keda_proxy.steps import _selection as selection

        return getattr(selection, self.factory)()


random = _Builtin("random", "RandomSelector")
roundRobin = _Builtin("round-robin", "RoundRobinSelector")
leastPending = _Builtin("least-pending", "LeastPendingSelector")

__all__ = ["leastPending", "random", "roundRobin"]
