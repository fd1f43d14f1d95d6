"""
The proxy's side facing clients.  Each request becomes an
L{keda_proxy.interfaces.IDownstreamExchange} handed to the request path:

 - L{HTTP1ServerFactory}: the interceptor's own HTTP/1.1 server, whose
   request bodies stream as they arrive;
 - L{ReverseProxy}: the request path as a twisted.web resource, to embed it
   in any Twisted web application (L{keda_proxy.embedding}).
"""

from keda_proxy.downstream._http1 import HTTP1ServerFactory, listen_backlog
from keda_proxy.downstream._resource import ReverseProxy

__all__ = ["HTTP1ServerFactory", "ReverseProxy", "listen_backlog"]
