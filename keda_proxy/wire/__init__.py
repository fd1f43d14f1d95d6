"""
What the client and upstream legs share: HTTP/1.1 body framing, the
forwarding header rules, reason phrases, the GOAWAY handling both HTTP/2
sides give h2, pausing a producer while its consumer is full, and the
HTTP/1.1 writes sent to the socket by the protocols themselves, a turn's
later ones together at its end (the outbox).
Internal to the protocols: nothing public.
"""

__all__: list = []
