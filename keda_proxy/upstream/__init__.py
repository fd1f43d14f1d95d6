"""
The proxy's side facing workloads: a pooled HTTP/1.1 client, and an
HTTP/2 one whose requests are streams multiplexed on pooled connections
(h2c for a Service port whose C{appProtocol} is C{kubernetes.io/h2c}, h2
where a TLS upstream picks it by ALPN), dialling by Service name or pod
address, and TLS verified against the Service's name.
"""

from keda_proxy.upstream._http1client import ResponseHead, UpstreamConnection
from keda_proxy.upstream._pool import ConnectionPool
from keda_proxy.upstream._tls import UpstreamTLS

__all__ = ["ConnectionPool", "ResponseHead", "UpstreamConnection", "UpstreamTLS"]
