"""
What the client and upstream legs share: HTTP/1.1 body framing, the
forwarding header rules, reason phrases, the GOAWAY handling both HTTP/2
sides give h2, and pausing a producer while its consumer is full.
Internal to the protocols: nothing public.
"""

__all__: list = []
