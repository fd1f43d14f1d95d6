"""
Request-head parsing: the proxy's own parser
(L{keda_proxy.downstream._head.parse_head}) against httptools (llhttp), on
speed and on the hostile corpus the tests hold the proxy to.

Run: ``.venv/bin/python benchmarks/bench_head_parse.py`` (about 12 s; no
network; needs ``pip install httptools``, which is not a dependency of the
project).

What it measures:

1. Speed, in microseconds per request head, median of 5 repeats, for three
   heads: a small GET as ``wrk``/``hey`` send it, a browser GET with a dozen
   headers and a 1 KiB cookie, and a POST with Content-Length (and its
   body).  Both sides end with the same result, the one C{parse_head}
   returns: method, target, version, a dict of canonical header name ->
   list of stripped values, and the body's length (0 for none, None for
   chunked), asserted on every sample.  Columns:

   - ``own``: L{own_read}, what C{HTTP1ServerProtocol} does with a head
     that arrives in one read: one C{find} of CRLFCRLF, the slice, one
     tolerated empty line dropped, then C{parse_head}.  The request line
     comes again in every loop, so this is C{parse_head}'s memo hit (the
     same few paths come again and again in real traffic).
   - ``own new``: the same with the request-line memo emptied before every
     call: a request line never seen before.
   - ``httptools``: L{HttptoolsHeadParser}, one llhttp parser per
     connection, reused from message to message (the steady state), with
     the same canonical names, framing rule (C{parse_head}'s) and
     approximate size limits.
   - ``ht fresh``: L{httptools_parse}, a new parser for every head (a new
     connection per request).
   - ``llhttp floor``: llhttp with no Python callbacks but the end of the
     head: the C parse alone, what no wrapper can beat.

2. The hostile corpus: the raw requests of tests/test_strict_requests.py,
   tests/test_hostile_blackbox.py (client side), tests/test_proxy.py and
   tests/test_metrics.py, and a few extra probes (bare LF, odd methods,
   obs-text).  Each is read by the proxy's code, whole and a byte at a time
   (L{own_verdict}), and fed to llhttp with its default (strict) settings,
   whole and a byte at a time (L{llhttp_verdict}).  The ``from`` column
   says where the proxy's answer comes from:

   - ``head``: C{parse_head}'s L{HeadError} code (400, 414, 431);
   - ``size``: C{oversized} (414 / 431) on an incomplete head over
     C{MAX_HEAD_SIZE}, as the protocol checks before the head's end;
   - ``proto``: the protocol's own 400 for a head that is empty;
   - ``route``: C{RouteRequest} above the parser: 405 for CONNECT, 400
     when C{request_facts} finds no Host on HTTP/1.1 or several;
   - ``chunk``: the body's C{ChunkedDecoder} (chunk sizes, CRLF after the
     data), which the protocol runs after the head;
   - ``wait``: no CRLFCRLF yet and under the limit: the server waits for
     more bytes (bytes after the 30 s head timeout get a 408; a silent
     client is closed at the idle timeout).

   llhttp's verdict goes through the same route checks, and through
   C{parse_head}'s target-form rule (which C{parse_head} applies itself).
   ``wrapped`` is L{httptools_parse}: llhttp plus canonical names, the
   framing rule and approximate size limits.  Whether each verdict is what
   the tests expect is asserted.

3. Capability probes: pausing after one message, trailers, Upgrade and
   CONNECT, size limits (414 / 431), bare LF line ends, and the
   C{set_dangerous_leniencies} flags of the installed httptools.
"""

from __future__ import annotations

import inspect
import statistics
import sys
import timeit
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httptools  # noqa: E402

from keda_proxy.downstream._head import (  # noqa: E402
    _REQUEST_LINES,
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    HeadError,
    _framing,
    _other_target_form,
    oversized,
    parse_head,
)
from keda_proxy.steps._route import request_facts  # noqa: E402
from keda_proxy.wire._framing import ChunkedDecoder, ChunkedError  # noqa: E402
from keda_proxy.wire._headers import (  # noqa: E402
    CANONICAL_NAMES,
    InvalidHeaderName,
    canonical_name,
)

REPEAT = 5
#: seconds each repeat of each timing should take (the loop count is fitted)
REPEAT_SECONDS = 0.12

_END = b"\r\n\r\n"


class Incomplete(ValueError):
    """No whole head yet: the server waits for more bytes."""


# -- the proxy's own parser, called as HTTP1ServerProtocol calls it -------------------

def own_read(data: bytes):
    """The head at the start of C{data}, as C{HTTP1ServerProtocol} reads one
    that arrives in one read (C{dataReceived}, C{_read_head},
    C{_start_request}): C{parse_head}'s result, or L{HeadError} /
    L{Incomplete}."""
    end = data.find(_END)
    if end > 0:
        head = data[:end]
        if head[:2] == b"\r\n":  # one empty line ahead of a request is tolerated
            head = head[2:]
        return parse_head(head)
    if end == 0:
        raise HeadError(400)  # an empty head: the protocol's own 400
    code = oversized(data)
    if code is not None:
        raise HeadError(code)
    raise Incomplete("no CRLFCRLF yet")


def own_read_new_line(data: bytes):
    """L{own_read} for a request line not seen before."""
    _REQUEST_LINES.clear()
    return own_read(data)


# -- the same with httptools ----------------------------------------------------------

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class _Collector:
    """httptools callbacks building what C{parse_head} returns, with the
    size limits approximated from what the callbacks see (llhttp has none:
    see L{probe_capabilities})."""

    __slots__ = ("url", "headers", "size", "count", "complete", "refused")

    def __init__(self):
        self.on_message_begin()

    def on_message_begin(self):
        self.url = b""
        self.headers = {}
        self.size = 0
        self.count = 0
        self.complete = False
        self.refused = None

    def on_url(self, url: bytes):  # called once per span: a URL may come in pieces
        url = self.url = self.url + url
        if len(url) > MAX_HEAD_SIZE:
            self.refused = HeadError(414)
            raise self.refused

    def on_header(self, name: bytes, value: bytes):
        key = CANONICAL_NAMES.get(name)
        if key is None:
            try:
                key = canonical_name(name)
            except InvalidHeaderName:
                self.refused = HeadError(400)
                raise self.refused from None
        value = value.strip(b" \t")  # llhttp drops leading OWS, keeps trailing
        values = self.headers.get(key)
        if values is None:
            self.headers[key] = [value]
        else:
            values.append(value)
        self.size += len(name) + len(value) + 2
        self.count += 1
        if self.size + len(self.url) > MAX_HEAD_SIZE:
            self.refused = HeadError(431)
            raise self.refused
        if self.count > MAX_HEADERS:
            self.refused = HeadError(400)
            raise self.refused

    def on_headers_complete(self):
        self.complete = True

    def on_body(self, body: bytes):
        pass  # a server hands it on; the heads here are judged, not forwarded


class HttptoolsHeadParser:
    """One llhttp parser for a connection's requests, one after another."""

    def __init__(self):
        self.collector = _Collector()
        self.parser = httptools.HttpRequestParser(self.collector)

    def parse(self, data: bytes):
        c, p = self.collector, self.parser
        try:
            p.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # Upgrade or CONNECT: the head is whole, what follows is not HTTP
        except httptools.HttpParserError:
            if c.refused is not None:
                raise c.refused from None
            raise HeadError(400) from None
        if not c.complete:
            code = oversized(data)
            if code is not None:
                raise HeadError(code)
            raise Incomplete("head not complete")
        version = _VERSIONS[p.get_http_version()]
        headers = c.headers
        if b"Content-Length" in headers or b"Transfer-Encoding" in headers:
            length = _framing(headers, version)
        else:
            length = 0
        return p.get_method(), c.url, version, headers, length


def httptools_parse(data: bytes):
    """C{parse_head}'s result from a new httptools parser."""
    return HttptoolsHeadParser().parse(data)


class _HeadOnly:
    """llhttp with no per-field callbacks: the cost of the C parse alone."""

    def on_headers_complete(self):
        pass


# -- the samples --------------------------------------------------------------------

COOKIE = b"; ".join(b"c%02d=%s" % (i, b"v" * 40) for i in range(23))[:1024]

SAMPLES = {
    "wrk GET (Host + 2)": (
        b"GET /api/items?id=42 HTTP/1.1\r\n"
        b"Host: web.example.com\r\n"
        b"User-Agent: wrk\r\n"
        b"Accept: */*\r\n\r\n"),
    "browser GET (12 hdrs, 1 KiB cookie)": (
        b"GET /app/dashboard?tab=overview HTTP/1.1\r\n"
        b"Host: web.example.com\r\n"
        b"Connection: keep-alive\r\n"
        b"sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", "
        b"\"Not-A.Brand\";v=\"99\"\r\n"
        b"sec-ch-ua-mobile: ?0\r\n"
        b"sec-ch-ua-platform: \"Linux\"\r\n"
        b"Upgrade-Insecure-Requests: 1\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/124.0.0.0 Safari/537.36\r\n"
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
        b"image/webp,*/*;q=0.8\r\n"
        b"Sec-Fetch-Site: same-origin\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Accept-Language: en-GB,en;q=0.9\r\n"
        b"Cookie: " + COOKIE + b"\r\n\r\n"),
    "POST with Content-Length": (
        b"POST /api/orders HTTP/1.1\r\n"
        b"Host: web.example.com\r\n"
        b"User-Agent: python-requests/2.32.3\r\n"
        b"Accept: application/json\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 47\r\n\r\n"
        b"{\"item\": \"widget\", \"qty\": 3, \"note\": \"urgent\"}\n"),
}


def _fit(call) -> int:
    """Loops for one repeat of about REPEAT_SECONDS."""
    n = 200
    while True:
        elapsed = timeit.timeit(call, number=n)
        if elapsed > 0.02:
            return max(200, int(n * REPEAT_SECONDS / elapsed))
        n *= 4


def _medians_us(calls) -> list:
    """Each call's median time in microseconds over REPEAT repeats, the
    calls taking turns within every repeat, so that a slower moment of the
    machine weighs on all of them alike."""
    loops = []
    for call in calls:
        call()  # warm: names memoised, parser set up
        loops.append(_fit(call))
    times: list = [[] for _ in calls]
    for _ in range(REPEAT):
        for call, n, out in zip(calls, loops, times, strict=True):
            out.append(timeit.timeit(call, number=n) / n * 1e6)
    return [statistics.median(t) for t in times]



def check_same_result() -> None:
    for name, data in SAMPLES.items():
        own = own_read(data)
        assert own == own_read_new_line(data), name
        assert own == httptools_parse(data), name
        reused = HttptoolsHeadParser()
        for _ in range(3):  # and message after message on one parser
            assert reused.parse(data) == own, name


def run_benchmark() -> list:
    rows = []
    for name, data in SAMPLES.items():
        reused = HttptoolsHeadParser()
        floor = httptools.HttpRequestParser(_HeadOnly())
        timings = _medians_us([
            lambda data=data: own_read(data),
            lambda data=data: own_read_new_line(data),
            lambda data=data, p=reused: p.parse(data),
            lambda data=data: httptools_parse(data),
            lambda data=data, p=floor: p.feed_data(data),
        ])
        rows.append((name, len(data), *timings))
    return rows


# -- the hostile corpus -------------------------------------------------------------

H = b"Host: example.com\r\n"
SH = b"Host: strict.test\r\n"
LONG_LINE = b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n" + H + b"\r\n"
LONG_HEADERS = (b"GET / HTTP/1.1\r\n" + H
                + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(80)) + b"\r\n")

STRICT = "test_strict_requests"
BLACKBOX = "test_hostile_blackbox"
PROXY = "test_proxy"
EXTRA = "extra (not in tests)"

#: (case, raw request, what the proxy answers, where it comes from); "ok" is a
#: head passed on to routing (forwarded, or a 404 for an unknown host)
CORPUS = [
    ("CL 2**63", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775808\r\n\r\n",
     "400", STRICT),
    ("CL 23 digits", b"POST / HTTP/1.1\r\n" + H
     + b"Content-Length: 99999999999999999999999\r\n\r\n", "400", STRICT),
    ("TE chunked twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400", STRICT),
    ("TE gzip, chunked", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "400", STRICT),
    ("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n",
     "400", STRICT),
    ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\n" + H
     + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400", STRICT),
    ("obs-fold SP", b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n two\r\n\r\n", "400", STRICT),
    ("obs-fold HTAB", b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n\ttwo\r\n\r\n", "400", STRICT),
    ("CTL 0x01 in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", "400", STRICT),
    ("CTL 0x1f in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x1fb\r\n\r\n", "400", STRICT),
    ("DEL in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", "400", STRICT),
    ("NUL in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", "400", STRICT),
    ("bare CR in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", "400", STRICT),
    ("target foo", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", "400", STRICT),
    ("target host:port (GET)", b"GET example.com:80 HTTP/1.1\r\n" + H + b"\r\n", "400", STRICT),
    ("target * (GET)", b"GET * HTTP/1.1\r\n" + H + b"\r\n", "400", STRICT),
    ("target http:/x", b"GET http:/x HTTP/1.1\r\n" + H + b"\r\n", "400", STRICT),
    ("HTAB in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\tb\r\n\r\n", "ok", STRICT),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", "ok", STRICT),
    ("absolute-form", b"GET http://example.com/p?q HTTP/1.1\r\n" + H + b"\r\n", "ok", STRICT),
    ("CL 0009", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0009\r\n\r\n123456789",
     "ok", STRICT),
    ("chunk size 17 hex digits", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"\r\n10000000000000000\r\nx", "400", STRICT),
    ("chunk size 2**63", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"8000000000000000\r\nx", "400", STRICT),
    ("chunk data without CRLF", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"\r\n5\r\nhelloX\r\n0\r\n\r\n", "400", STRICT),
    ("chunk size +5", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"+5\r\nhello\r\n0\r\n\r\n", "400", STRICT),
    ("bare LF after chunk size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"\r\n5\nhello\r\n0\r\n\r\n", "400", STRICT),
    ("bb huge CL", b"POST /s HTTP/1.1\r\n" + SH + b"Content-Length: 99999999999999999999\r\n"
     b"\r\nx", "400", BLACKBOX),
    ("bb TE twice", b"POST /s HTTP/1.1\r\n" + SH + b"Transfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", "400", BLACKBOX),
    ("bb TE on HTTP/1.0", b"POST /s HTTP/1.0\r\n" + SH + b"Transfer-Encoding: chunked\r\n\r\n"
     b"1\r\nx\r\n0\r\n\r\n", "400", BLACKBOX),
    ("bb obs-fold", b"GET /s HTTP/1.1\r\n" + SH + b"X-Folded: a\r\n b\r\n\r\n", "400", BLACKBOX),
    ("bb CTL in value", b"GET /s HTTP/1.1\r\n" + SH + b"X-Ctl: a\x01b\r\n\r\n", "400", BLACKBOX),
    ("bb target foo", b"GET foo HTTP/1.1\r\n" + SH + b"\r\n", "400", BLACKBOX),
    ("no Host on 1.1", b"GET / HTTP/1.1\r\n\r\n", "400", PROXY),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     "405", PROXY),
    ("CL + TE", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400", PROXY),
    ("CL 5 and CL 6", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
     b"Content-Length: 6\r\n\r\nhello!", "400", PROXY),
    ("NUL in value (2)", b"GET / HTTP/1.1\r\n" + H + b"X-Bad: a\x00b\r\n\r\n", "400", PROXY),
    ("space in name", b"GET / HTTP/1.1\r\n" + H + b"Bad Name: x\r\n\r\n", "400", PROXY),
    ("no colon", b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n", "400", PROXY),
    ("CL 5x", b"GET / HTTP/1.1\r\n" + H + b"Content-Length: 5x\r\n\r\n", "400", PROXY),
    ("TE gzip", b"GET / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", "400", PROXY),
    ("70 KB request line", LONG_LINE, "414", PROXY),
    ("80 KB of headers", LONG_HEADERS, "431", PROXY),
    ("websocket Upgrade", b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\n"
     b"Upgrade: websocket\r\n\r\n", "ok", PROXY),
    ("method BREW", b"BREW / HTTP/1.1\r\nHost: nowhere.example\r\n\r\n", "ok",
     "test_metrics"),
    ("bare LF throughout", b"GET / HTTP/1.1\nHost: example.com\n\n", None, EXTRA),
    ("bare LF, one header", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\nX-B: 2\r\n\r\n", None, EXTRA),
    ("leading CRLF", b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n", None, EXTRA),
    ("space before colon", b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello",
     None, EXTRA),
    ("TE Chunked (case)", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n"
     b"0\r\n\r\n", None, EXTRA),
    ("TE chunked, chunked", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", None, EXTRA),
    ("CL 5, 5", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", None, EXTRA),
    ("CL twice, same", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
     b"Content-Length: 5\r\n\r\nhello", None, EXTRA),
    ("method get (lower)", b"get / HTTP/1.1\r\n" + H + b"\r\n", None, EXTRA),
    ("method PURGE", b"PURGE / HTTP/1.1\r\n" + H + b"\r\n", None, EXTRA),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", None, EXTRA),
    ("obs-text in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: caf\xe9\r\n\r\n", None, EXTRA),
    ("0xb0 in target", b"GET /\xb0 HTTP/1.1\r\n" + H + b"\r\n", None, EXTRA),
    ("two Hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: other.example\r\n\r\n", None, EXTRA),
    ("empty header name", b"GET / HTTP/1.1\r\n" + H + b": x\r\n\r\n", None, EXTRA),
]


# -- verdicts --------------------------------------------------------------------------

def _route(method: bytes, target: bytes, version: bytes, headers: dict) -> str:
    """C{RouteRequest.handle}'s checks before any route is looked up: 405
    for CONNECT, 400 when C{request_facts} cannot read the request (no Host
    on HTTP/1.1 without an absolute-form target, several Hosts); "ok" is a
    request passed on to routing (forwarded, or a 404 for an unknown host)."""
    if method == b"CONNECT":
        return "405"
    downstream = SimpleNamespace(method=method, target=target, version=version,
                                 headers=headers, path=target.partition(b"?")[0])
    return "ok" if request_facts(downstream) is not None else "400"


def _pieces(data: bytes, trickle: bool):
    return [data[i:i + 1] for i in range(len(data))] if trickle else [data]


def _find_head(raw: bytes, trickle: bool):
    """C{(head, rest, None)} as C{HTTP1ServerProtocol._read_head} finds the
    head's end, whole or a byte at a time, or C{(None, None, (verdict,
    from))} when it answers (or waits) before the head is whole."""
    if not trickle:
        end = raw.find(_END)
        if end > 0:
            return raw[:end], raw[end + 4:], None
        if end == 0:
            return None, None, ("400", "proto")
        code = oversized(raw)
        return None, None, (str(code), "size") if code is not None else ("wait", "wait")
    buf = bytearray()
    for i in range(len(raw)):
        scanned = len(buf) - 3
        buf += raw[i:i + 1]
        end = buf.find(_END, scanned if scanned > 0 else 0)
        if end < 0:
            code = oversized(buf)
            if code is not None:
                return None, None, (str(code), "size")
        elif end == 0:
            return None, None, ("400", "proto")
        else:
            return bytes(buf[:end]), raw[i + 1:], None
    return None, None, ("wait", "wait")


def own_verdict(raw: bytes, trickle: bool = False):
    """(verdict, where it comes from) of the proxy's own code: the head
    found as the protocol finds it, C{parse_head}, the route checks, and
    for a chunked body the protocol's C{ChunkedDecoder} on what follows."""
    head, rest, answer = _find_head(raw, trickle)
    if answer is not None:
        return answer
    if head[:2] == b"\r\n":
        head = head[2:]
    try:
        method, target, version, headers, length = parse_head(head)
    except HeadError as e:
        return str(e.code), "head"
    verdict = _route(method, target, version, headers)
    if verdict != "ok":
        return verdict, "route"
    if length is None:
        decoder = ChunkedDecoder(lambda data: None, lambda rest: None)
        try:
            for piece in _pieces(rest, trickle):
                decoder.dataReceived(piece)
        except ChunkedError:
            return "400", "chunk"
    return "ok", ""


def _above_parser(method: bytes, target: bytes, version: bytes, headers: dict) -> str:
    """What the proxy checks of a head another parser accepted:
    C{parse_head}'s target forms (origin, absolute, ``*`` for OPTIONS, any
    for CONNECT), then L{_route}."""
    if target[:1] != b"/" and not _other_target_form(method, target):
        return "400"
    return _route(method, target, version, headers)


class _Probe:
    """Records what llhttp reports of one message."""

    def __init__(self):
        self.url = b""
        self.headers: dict = {}
        self.complete = False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.setdefault(name.title(), []).append(value)

    def on_headers_complete(self):
        self.complete = True


def llhttp_verdict(raw: bytes, trickle: bool = False):
    """llhttp's verdict with its default settings, then L{_above_parser};
    (verdict, llhttp's reason)."""
    probe = _Probe()
    parser = httptools.HttpRequestParser(probe)
    try:
        for piece in _pieces(raw, trickle):
            parser.feed_data(piece)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        return "400", str(e)
    if not probe.complete:
        return "wait", "head not complete"
    version = _VERSIONS.get(parser.get_http_version(), b"?")
    return _above_parser(parser.get_method(), probe.url, version, probe.headers), "accepted"


def wrapped_verdict(raw: bytes) -> str:
    try:
        method, target, version, headers, _ = httptools_parse(raw)
    except Incomplete:
        return "wait"
    except HeadError as e:
        return str(e.code)
    return _above_parser(method, target, version, headers)


def run_corpus() -> list:
    rows = []
    for case, raw, expected, source in CORPUS:
        own, where = own_verdict(raw)
        trickled, where_trickled = own_verdict(raw, trickle=True)
        if where_trickled != where:  # e.g. a 414 from oversized() before the head's end
            where += "/" + where_trickled
        if expected is None:
            expected = own
        for way, verdict in (("whole", own), ("a byte at a time", trickled)):
            if verdict != expected:
                raise AssertionError(
                    f"the proxy's code says {verdict} for {case!r} ({way}), the tests {expected}")
        strict, reason = llhttp_verdict(raw)
        trickled, _ = llhttp_verdict(raw, trickle=True)
        if trickled != strict:
            strict += f" ({trickled} trickled)"
        rows.append((case, source, expected, where, strict, wrapped_verdict(raw), reason))
    return rows


# -- what else a server needs of the parser -------------------------------------------

def _events(data: bytes, setup=None, cls=httptools.HttpRequestParser):
    events = []

    class Recorder:
        def on_message_begin(self):
            events.append("begin")

        def on_url(self, url):
            events.append("url")

        def on_header(self, name, value):
            events.append(f"header {name.decode()}")

        def on_headers_complete(self):
            events.append("headers-complete")

        def on_body(self, body):
            events.append(f"body {len(body)}")

        def on_message_complete(self):
            events.append("message-complete")

        def on_chunk_header(self):
            events.append("chunk-header")

        def on_chunk_complete(self):
            events.append("chunk-complete")

    parser = cls(Recorder())
    if setup:
        setup(parser)
    try:
        parser.feed_data(data)
        outcome = "ok"
    except httptools.HttpParserUpgrade as e:
        outcome = f"HttpParserUpgrade(offset={e.args[0]})"
    except httptools.HttpParserError as e:
        outcome = f"{type(e).__name__}: {e}"
    return outcome, events


def probe_capabilities() -> list:
    notes = []
    get = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"

    # 1. pause after one message
    api = [n for n in dir(httptools.HttpRequestParser) if "pause" in n or "resume" in n]
    _, events = _events(get + get.replace(b"GET /1", b"GET /2"))
    seen = []

    class StopAfterOne:
        def on_message_complete(self):
            seen.append(1)
            raise RuntimeError("stop here")

    p = httptools.HttpRequestParser(StopAfterOne())
    try:
        p.feed_data(get + get)
    except httptools.HttpParserError as e:
        first = type(e).__name__
    try:
        p.feed_data(get)
        again = "accepted"
    except httptools.HttpParserError as e:
        again = f"{type(e).__name__} again"
    notes.append(("pause", f"pause/resume methods: {api or 'none'}; two pipelined requests "
                  f"in one feed_data give {events.count('message-complete')} "
                  f"message-complete; raising in on_message_complete gives {first}, with no "
                  f"offset, and the next feed_data: {again} (llhttp errors are sticky)"))

    # 2. trailers
    outcome, events = _events(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"1\r\nx\r\n0\r\nX-T: 1\r\n\r\n")
    notes.append(("trailers", f"{outcome}: " + ", ".join(events)))

    # 3. upgrade and CONNECT
    for raw in (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"\r\nRAW", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nRAW"):
        outcome, events = _events(raw)
        notes.append((raw.split(b" ")[0].decode() + " upgrade",
                      f"{outcome} (len {len(raw)}): " + ", ".join(events)))
    outcome, events = _events(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nGET")
    notes.append(("Upgrade without Connection", f"{outcome}: " + ", ".join(events)))

    # 4. limits
    outcome, _ = _events(LONG_LINE.replace(b"a" * 70000, b"a" * 1_000_000))
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 1_000_000 + b"\r\n\r\n"
    outcome2, _ = _events(big)
    notes.append(("limits", f"1 MB request-target: {outcome}; 1 MB header value: {outcome2}"))

    # 5. bare LF
    for setup, label in ((None, "strict"),
                         (lambda p: p.set_dangerous_leniencies(lenient_optional_cr_before_lf=True),
                          "lenient_optional_cr_before_lf")):
        results = []
        for raw in (b"GET / HTTP/1.1\nHost: a\n\n", b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n"):
            results.append(_events(raw, setup)[0])
        notes.append((f"bare LF, {label}", "; ".join(results)))

    # 6. the leniencies this version has
    flags = list(inspect.signature(
        httptools.HttpRequestParser.set_dangerous_leniencies).parameters)[1:]
    notes.append(("set_dangerous_leniencies", ", ".join(flags)))
    return notes


# -- main -------------------------------------------------------------------------------

def main() -> int:
    print(f"httptools {httptools.__version__}, Python {sys.version.split()[0]}\n")
    check_same_result()
    rows = run_benchmark()
    print("us per head, median of 5 (lower is better); ratio = own / httptools (reused)")
    print(f"{'head':36} {'bytes':>5} {'own':>6} {'own new':>7} {'httptools':>9} "
          f"{'ht fresh':>8} {'llhttp floor':>12} {'ratio':>5} {'new':>5}")
    for name, size, own, new, ht, fresh, bare in rows:
        print(f"{name:36} {size:5d} {own:6.2f} {new:7.2f} {ht:9.2f} {fresh:8.2f} "
              f"{bare:12.2f} {own / ht:5.2f} {new / ht:5.2f}")

    corpus = run_corpus()
    print(f"\nhostile corpus ({len(corpus)} cases): the proxy's verdict (the same whole and a "
          "byte at a time), where it\ncomes from (whole/trickled when they differ), llhttp's "
          "after the same checks above the parser;\n'wrapped' is httptools_parse. 'wait': no "
          "CRLFCRLF, under the size limit: the server reads on\nuntil its head timeout (408) "
          "or its idle timeout")
    print(f"{'case':26} {'source':21} {'proxy':>5} {'from':10} {'llhttp':>7} {'wrapped':>7}  "
          "llhttp says")
    disagreements = []
    for case, source, ours, where, strict, wrapped, reason in corpus:
        mark = "" if strict == ours else "  <-"
        print(f"{case:26} {source:21} {ours:>5} {where:10} {strict:>7} {wrapped:>7}  "
              f"{reason[:40]}{mark}")
        if strict != ours:
            disagreements.append((case, ours, where, strict, wrapped))
    print(f"\ndisagreements, strict llhttp against the proxy ({len(disagreements)}):")
    for case, ours, where, strict, wrapped in disagreements:
        fixed = "wrapper agrees" if wrapped == ours else f"wrapper still {wrapped}"
        print(f"  {case:26} proxy {ours:>4} {'(' + where + ')' if where else '':12} "
              f"llhttp {strict:>4}  ({fixed})")

    print("\nwhat else the server needs of the parser:")
    for topic, note in probe_capabilities():
        print(f"  {topic}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
