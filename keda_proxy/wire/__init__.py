"""
HTTP/1.1 as both legs speak it: body framing, the forwarding header rules,
reason phrases.  Internal to the protocols: nothing public.
"""

__all__: list = []
