"""
Plugin package for third-party routing plugins.

A routing plugin is a module placed in this package (by any distribution)
that defines an object providing both C{twisted.plugin.IPlugin} and
L{keda_proxy.interfaces.IRoutingPlugin}.  Third-party distributions must
ship only their module, never an C{__init__.py} here.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # noqa: F821
__all__: list = []
