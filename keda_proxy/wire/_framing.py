"""
HTTP/1.1 message bodies: the chunked decoder for both legs, and the
Content-Length rule.

A proxy sits between two parsers, and any difference between how it and
the next hop read a body's end is a smuggling vector.  So these are
strict where Go is strict: a chunk size is 1 to 16 hex digits below 2**63
(Go's limit), each chunk's data ends in exactly CRLF, size and trailer
lines are bounded, and a Content-Length is decimal digits only, below
2**63.
"""

from __future__ import annotations

from typing import Callable, List, Optional

#: longest chunk-size line (size and extensions) accepted
MAX_SIZE_LINE = 1024
#: most trailer bytes accepted after the last chunk
MAX_TRAILERS = 16 * 1024
#: a length must fit in 63 bits, as Go's int64
_MAX_LENGTH = (1 << 63) - 1

_HEX = b"0123456789abcdefABCDEF"
_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


class ChunkedError(ValueError):
    """A chunked body that does not follow RFC 9112 §7.1."""


def content_length(value: bytes) -> Optional[int]:
    """A Content-Length value as an int, or None if it is not one: digits
    only (no sign, no spaces, no list) and below 2**63."""
    if not value.isdigit() or len(value) > 19:
        return None
    length = int(value)
    return length if length <= _MAX_LENGTH else None


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions after ``;`` ignored)."""
    size = line.split(b";", 1)[0].rstrip(b" \t")
    if not 0 < len(size) <= 16 or size.translate(None, _HEX):
        raise ChunkedError(f"bad chunk size {line[:40]!r}")
    value = int(size, 16)
    if value > _MAX_LENGTH:
        raise ChunkedError("chunk size too large")
    return value


class ChunkedDecoder:
    """Decodes a chunked body as it arrives.

    @param on_data: called with each piece of body data.
    @param on_done: called once, after the last chunk and its trailers,
        with whatever arrived past the body's end.
    @ivar trailers: the trailer lines, as sent.
    """

    def __init__(self, on_data: Callable[[bytes], None], on_done: Callable[[bytes], None]):
        self._on_data = on_data
        self._on_done = on_done
        self._buffer = b""
        self._state = _SIZE
        self._remaining = 0
        self._trailer_bytes = 0
        self.trailers: List[bytes] = []

    @property
    def finished(self) -> bool:
        return self._state == _DONE

    def dataReceived(self, data: bytes) -> None:
        """Raises L{ChunkedError}; the caller then drops the connection."""
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        while data:
            state = self._state
            if state == _DATA:
                n = self._remaining
                if len(data) < n:
                    self._remaining = n - len(data)
                    self._on_data(data)
                    return
                self._state = _CRLF
                self._remaining = 0
                piece, data = data[:n], data[n:]
                self._on_data(piece)
            elif state == _CRLF:
                if data[:2] != b"\r\n"[:len(data[:2])]:
                    raise ChunkedError("chunk data not followed by CRLF")
                if len(data) < 2:
                    self._buffer = data
                    return
                data = data[2:]
                self._state = _SIZE
            elif state == _DONE:
                return
            else:
                end = data.find(b"\r\n")
                limit = MAX_SIZE_LINE if state == _SIZE else MAX_TRAILERS - self._trailer_bytes
                if end < 0 or end > limit:
                    if len(data) > limit or end > limit:
                        raise ChunkedError("chunk-size or trailer line too long")
                    self._buffer = data
                    return
                line, data = data[:end], data[end + 2:]
                if state == _SIZE:
                    size = chunk_size(line)
                    if size:
                        self._state, self._remaining = _DATA, size
                    else:
                        self._state = _TRAILER
                elif line:
                    if 10 in line or 13 in line or line[:1] in (b" ", b"\t"):
                        raise ChunkedError("bad trailer line")
                    self._trailer_bytes += len(line) + 2
                    self.trailers.append(line)
                else:
                    self._state = _DONE
                    self._on_done(data)
                    return

    def noMoreData(self) -> None:
        """The connection ended: an unfinished body is an error."""
        if self._state != _DONE:
            raise ChunkedError("chunked body cut short")


class CountedDecoder:
    """A body of known length: passes on C{length} bytes, then calls
    C{on_done} with whatever came past them."""

    def __init__(self, length: int, on_data: Callable[[bytes], None],
                 on_done: Callable[[bytes], None]):
        self._remaining = length
        self._on_data = on_data
        self._on_done = on_done

    @property
    def finished(self) -> bool:
        return self._remaining is None

    def dataReceived(self, data: bytes) -> None:
        remaining = self._remaining
        if remaining is None:
            return
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            self._on_data(data)
            return
        self._remaining = None
        if remaining:
            self._on_data(data[:remaining])
        self._on_done(data[remaining:])

    def noMoreData(self) -> None:
        if self._remaining is not None:
            raise ChunkedError("body cut short")
