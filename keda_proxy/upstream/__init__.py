"""
The proxy's side facing workloads: a pooled HTTP/1.1 client, dialling by
Service name or pod address, and TLS verified against the Service's name.
"""

from keda_proxy.upstream._http1client import ResponseHead, UpstreamConnection
from keda_proxy.upstream._pool import ConnectionPool
from keda_proxy.upstream._tls import UpstreamTLS

__all__ = ["ConnectionPool", "ResponseHead", "UpstreamConnection", "UpstreamTLS"]
