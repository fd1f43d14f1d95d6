"""keda-interceptor: the KEDA HTTP add-on's interceptor, on Twisted."""

__version__ = "0.1.0"

__all__ = ["__version__"]
