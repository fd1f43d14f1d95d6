"""
The request path: small steps, each in its own module, composed in one
function (L{build_request_path}) and run for every request by a
L{Pipeline}.  Third-party steps plug in through
L{keda_proxy.interfaces.IRequestStepPlugin}.
"""

from keda_proxy.steps._context import RequestContext
from keda_proxy.steps._path import InFlight, Pipeline, ProxySettings, build_request_path
from keda_proxy.steps._responses import write_error

__all__ = ["InFlight", "Pipeline", "ProxySettings", "RequestContext", "build_request_path",
           "write_error"]
