"""
The C{h2} connection as the proxy's HTTP/2 server runs it, and the budgets
that bound what a client may make it do without sending requests.
"""

from __future__ import annotations

from h2.connection import H2Connection
from hyperframe.frame import DataFrame, HeadersFrame

from keda_proxy.wire._h2state import graceful

__all__ = ["AnsweredFrame", "FrameBudget", "ServerH2"]


class FrameBudget:
    """A token bucket: C{burst} frames at once, C{rate} more per second.
    L{spend} says whether the connection may go on."""

    __slots__ = ("burst", "rate", "tokens", "at", "now")

    def __init__(self, burst: int, rate: float, now):
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.now = now
        self.at = now()

    def spend(self) -> bool:
        now = self.now()
        tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - 1
        self.at = now
        self.tokens = tokens
        return tokens >= 0


class ServerH2(H2Connection):
    """h2's connection, with the graceful GOAWAY of
    L{keda_proxy.wire._h2state} (a client's GOAWAY lets the streams it
    opened finish, as Go's C{ClientConn.Shutdown} waits for them), and one
    change to its per-frame step (C{_receive_frame}, pinned by
    tests/test_h2_private_names.py): a HEADERS or DATA frame on a stream
    already reset is answered with RST_STREAM by h2, and gives no event,
    so a flood of them would spend no budget and the answers would pile
    up for a client that does not read.  Each comes out as an
    L{AnsweredFrame}, which spends the control budget; a DATA frame
    carrying bytes does not, as a client may have had a window's worth in
    flight when the stream was reset.
    """

    #: How many closed streams h2 remembers (how each was closed, to answer
    #: a late frame on one): h2's default, 65,536, is about 4.7 MB for a
    #: long-lived busy connection; 4,096 is about 300 KB, and covers the
    #: 250 streams a client may have open many times over.
    MAX_CLOSED_STREAMS = 4096

    def __init__(self, config):
        super().__init__(config)
        graceful(self)

    def _receive_frame(self, frame):
        events = super()._receive_frame(frame)
        kind = type(frame)
        if not events and (kind is HeadersFrame or (
                kind is DataFrame and not frame.flow_controlled_length)):
            return [AnsweredFrame(frame.stream_id)]
        return events


class AnsweredFrame:
    """A frame on a closed stream, which h2 answered itself."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int):
        self.stream_id = stream_id
