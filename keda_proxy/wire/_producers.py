"""
Holding a producer back while its consumer is full.

Both HTTP/2 legs pause the producer feeding a stream (an upstream
response, a client's request body) while too much of it is queued or the
connection cannot write, and resume it once that is over: pause and resume
each once per change, however often the condition is checked.
"""

from __future__ import annotations


def steer(producer, paused: bool, hold: bool) -> bool:
    """Pause C{producer} when C{hold} becomes true, resume it when it
    becomes false; returns the new paused state (C{hold})."""
    if hold != paused:
        if hold:
            producer.pauseProducing()
        else:
            producer.resumeProducing()
    return hold
