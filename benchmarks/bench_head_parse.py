"""
Request-head parsing: our own Python parser against httptools (llhttp), on
speed and on the hostile corpus the tests hold the proxy to.

Run: ``.venv/bin/python benchmarks/bench_head_parse.py`` (about 10 s;
needs ``pip install httptools``, which is not a dependency of the project).

What it measures:

1. Speed, in microseconds per request head, median of 5 repeats, for three
   heads: a small GET as ``wrk``/``hey`` send it, a browser GET with a dozen
   headers and a 1 KiB cookie, and a POST with Content-Length (and its
   body).  Both parsers end with the same result: method, target, version,
   a dict of canonical header name -> list of stripped values, and the
   body's framing (asserted on every sample).  Columns:

   - ``own``: L{own_parse}, the checks of C{ProxyChannel._whole_head} (one
     C{find} of CRLFCRLF, one C{split}, the control-character check as one
     C{bytes.translate}, obs-fold refused, names through C{CANONICAL_NAMES},
     the Content-Length / Transfer-Encoding framing rule).
   - ``httptools``: L{HttptoolsHeadParser}, one llhttp parser per
     connection, reused from message to message (the steady state).
   - ``ht fresh``: L{httptools_parse}, a new parser for every head (a new
     connection per request).
   - ``llhttp floor``: llhttp with no Python callbacks but the end of the
     head: the C parse alone, what no wrapper can beat.

2. The hostile corpus: the raw requests of tests/test_strict_requests.py,
   tests/test_hostile_blackbox.py (client side), tests/test_proxy.py and
   tests/test_metrics.py, and a few extra probes (bare LF, odd methods,
   obs-text).  Each is fed whole and a byte at a time to llhttp with its
   default (strict) settings; its verdict, after the checks any server does
   above the parser (target form, Host, CONNECT answered 405), is compared
   with what the tests expect.  ``wrapped`` is L{httptools_parse}: llhttp
   plus our canonical names, framing rule and approximate size limits.

3. Capability probes: pausing after one message, trailers, Upgrade and
   CONNECT, size limits (414 / 431), bare LF line ends, and the
   C{set_dangerous_leniencies} flags of the installed httptools.

L{own_parse} copies C{parse_request_line} and C{_CONTROL} from
keda_proxy.downstream._http1 rather than importing them, so that this
script measures the algorithm whatever becomes of that module; names and
Content-Length come from keda_proxy.wire as the proxy uses them.
"""

from __future__ import annotations

import inspect
import re
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httptools  # noqa: E402

from keda_proxy.wire._framing import ChunkedDecoder, ChunkedError, content_length  # noqa: E402
from keda_proxy.wire._headers import CANONICAL_NAMES, canonical_name  # noqa: E402

REPEAT = 5
#: seconds each repeat of each timing should take (the loop count is fitted)
REPEAT_SECONDS = 0.12

#: ProxyChannel's limits: totalHeadersSize and MAX_LENGTH, HTTPChannel.maxHeaders
MAX_HEAD_SIZE = 64 * 1024
MAX_LINE = 64 * 1024
MAX_HEADERS = 500

CHUNKED = "chunked"


class Refused(ValueError):
    """A request head answered with C{status} (400, 414, 431)."""

    def __init__(self, status: int, why: str):
        super().__init__(f"{status} {why}")
        self.status = status


class Incomplete(ValueError):
    """No whole head yet: the server waits for more bytes."""


# -- our own parser (ProxyChannel._whole_head and the steps it calls) --------------

_TOKEN_BYTES = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                b"!#$%&'*+-.^_`|~")
_TARGET_BYTES = bytes(range(33, 177))
_CONTROL = bytes(c for c in range(32) if c != 9) + b"\x7f"


def parse_request_line(line: bytes):
    """keda_proxy.downstream._http1.parse_request_line, copied."""
    method, target, version = line.split(b" ")
    if not method or method.translate(None, _TOKEN_BYTES):
        raise ValueError("Invalid method")
    if target.translate(None, _TARGET_BYTES):
        raise ValueError("Invalid request-target")
    if not target:
        raise ValueError("Empty request-target")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise ValueError("Invalid version")
    return method, target, version


def _framing(headers: dict, version: bytes):
    """ProxyChannel._choose_framing's rule, on the stored headers: one
    Content-Length (digits, below 2**63), or one ``Transfer-Encoding:
    chunked`` on HTTP/1.1; anything else, or both, is a 400."""
    lengths = headers.get(b"Content-Length")
    codings = headers.get(b"Transfer-Encoding")
    if lengths is None and codings is None:
        return 0
    if lengths is not None and codings is not None:
        raise Refused(400, "Content-Length with Transfer-Encoding")
    values = lengths or codings
    if len(values) > 1:
        raise Refused(400, "a second framing header")
    if lengths is not None:
        length = content_length(values[0])
        if length is None:
            raise Refused(400, "bad Content-Length")
        return length
    if values[0].lower() == b"chunked" and version == b"HTTP/1.1":
        return CHUNKED
    raise Refused(400, "bad Transfer-Encoding")


def own_parse(data: bytes):
    """One request head at the start of C{data}, parsed with the checks of
    C{ProxyChannel._whole_head} (and of the line parser it falls back to
    for limits, a leading empty line and folded lines).

    Returns (method, target, version, headers, framing): headers a dict of
    canonical name -> list of values, framing the body's length (0 for
    none) or L{CHUNKED}.  Raises L{Refused} or L{Incomplete} (both
    C{ValueError})."""
    if data[:2] == b"\r\n":  # one empty line before a request is ignored
        data = data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD_SIZE:
            first = data.find(b"\r\n", 0, MAX_LINE + 1)
            raise Refused(414 if first < 0 else 431, "head too large")
        raise Incomplete("no CRLFCRLF yet")
    head = data[:end]
    lines = head.split(b"\r\n")
    size = end - 2 * (len(lines) - 1)
    if len(lines[0]) > MAX_LINE:
        raise Refused(414, "request line too long")
    if size > MAX_HEAD_SIZE or (size > MAX_LINE and max(map(len, lines)) > MAX_LINE):
        raise Refused(431, "header section too large")
    if len(lines) - 1 > MAX_HEADERS:
        raise Refused(400, "too many headers")
    if head[:1] in (b" ", b"\t"):
        raise Refused(400, "request line starts with whitespace")
    if len(head.translate(None, _CONTROL)) != size \
            or head.find(b"\r\n ") >= 0 or head.find(b"\r\n\t") >= 0:
        raise Refused(400, "control character, bare CR or LF, or obs-fold")
    try:
        method, target, version = parse_request_line(lines[0])
    except ValueError as e:
        raise Refused(400, str(e)) from None
    headers: dict = {}
    known = CANONICAL_NAMES
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        key = known.get(name)
        if key is None:
            if not sep:
                raise Refused(400, "header line without a colon")
            try:
                key = canonical_name(name)
            except ValueError:  # InvalidHeaderName
                raise Refused(400, "header name not a token") from None
        values = headers.get(key)
        if values is None:
            headers[key] = [value.strip(b" \t")]
        else:
            values.append(value.strip(b" \t"))
    if b"Content-Length" in headers or b"Transfer-Encoding" in headers:
        framing = _framing(headers, version)
    else:
        framing = 0
    return method, target, version, headers, framing


# -- the same with httptools ----------------------------------------------------------

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class _Collector:
    """httptools callbacks building what L{own_parse} returns, with the
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
        if len(url) > MAX_LINE:
            self.refused = Refused(414, "request-target too long")
            raise self.refused

    def on_header(self, name: bytes, value: bytes):
        key = CANONICAL_NAMES.get(name)
        if key is None:
            try:
                key = canonical_name(name)
            except ValueError:  # InvalidHeaderName
                self.refused = Refused(400, "header name not a token")
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
            self.refused = Refused(431, "header section too large")
            raise self.refused
        if self.count > MAX_HEADERS:
            self.refused = Refused(400, "too many headers")
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
        except httptools.HttpParserError as e:
            if c.refused is not None:
                raise c.refused from None
            raise Refused(400, str(e) or type(e).__name__) from None
        if not c.complete:
            if len(data) > MAX_HEAD_SIZE:
                first = data.find(b"\r\n", 0, MAX_LINE + 1)
                raise Refused(414 if first < 0 else 431, "head too large")
            raise Incomplete("head not complete")
        version = _VERSIONS[p.get_http_version()]
        headers = c.headers
        if b"Content-Length" in headers or b"Transfer-Encoding" in headers:
            framing = _framing(headers, version)
        else:
            framing = 0
        return p.get_method(), c.url, version, headers, framing


def httptools_parse(data: bytes):
    """L{own_parse}'s result from a new httptools parser."""
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
        own = own_parse(data)
        assert own == httptools_parse(data), name
        reused = HttptoolsHeadParser()
        for _ in range(3):  # and message after message on one parser
            assert reused.parse(data) == own, name


def run_benchmark() -> list:
    rows = []
    for name, data in SAMPLES.items():
        reused = HttptoolsHeadParser()
        floor = httptools.HttpRequestParser(_HeadOnly())
        own, ht, fresh, bare = _medians_us([
            lambda data=data: own_parse(data),
            lambda data=data, p=reused: p.parse(data),
            lambda data=data: httptools_parse(data),
            lambda data=data, p=floor: p.feed_data(data),
        ])
        rows.append((name, len(data), own, ht, fresh, bare))
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
EXTRA = "extra (own verdict)"

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

_ABSOLUTE_SCHEMES = (b"http://", b"https://")
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]").match


def app_checks(method: bytes, target: bytes, version: bytes, headers: dict) -> str:
    """What the proxy checks above the parser, whichever parser it uses:
    the target form (ProxyChannel.allHeadersReceived), one Host on HTTP/1.1
    unless the target is absolute (request_facts), CONNECT answered 405."""
    if method == b"CONNECT":
        return "405"
    if target[:1] != b"/":
        if target == b"*":
            if method != b"OPTIONS":
                return "400"
        elif _ABSOLUTE_FORM(target) is None:
            return "400"
    if target[:8].lower().startswith(_ABSOLUTE_SCHEMES):
        return "ok"
    hosts = headers.get(b"Host", ())
    if len(hosts) > 1 or (not hosts and version == b"HTTP/1.1"):
        return "400"
    return "ok"


def own_verdict(raw: bytes) -> str:
    try:
        method, target, version, headers, framing = own_parse(raw)
    except Incomplete:
        return "wait"
    except Refused as e:
        return str(e.status)
    verdict = app_checks(method, target, version, headers)
    if verdict == "ok" and framing == CHUNKED:
        try:
            ChunkedDecoder(lambda data: None, lambda rest: None).dataReceived(
                raw[raw.find(b"\r\n\r\n") + 4:])
        except ChunkedError:
            return "400"
    return verdict


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
    """llhttp's verdict with its default settings, then L{app_checks};
    (verdict, llhttp's reason)."""
    probe = _Probe()
    parser = httptools.HttpRequestParser(probe)
    try:
        for piece in ([raw[i:i + 1] for i in range(len(raw))] if trickle else [raw]):
            parser.feed_data(piece)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        return "400", str(e)
    if not probe.complete:
        return "wait", "head not complete"
    version = _VERSIONS.get(parser.get_http_version(), b"?")
    return app_checks(parser.get_method(), probe.url, version, probe.headers), "accepted"


def wrapped_verdict(raw: bytes) -> str:
    try:
        method, target, version, headers, framing = httptools_parse(raw)
    except Incomplete:
        return "wait"
    except Refused as e:
        return str(e.status)
    return app_checks(method, target, version, headers)


def run_corpus() -> list:
    rows = []
    for case, raw, expected, source in CORPUS:
        own = own_verdict(raw)
        if expected is None:
            expected = own
        elif own != expected:
            raise AssertionError(f"own_parse says {own} for {case!r}, the tests {expected}")
        strict, reason = llhttp_verdict(raw)
        trickled, _ = llhttp_verdict(raw, trickle=True)
        if trickled != strict:
            strict += f" ({trickled} trickled)"
        rows.append((case, source, expected, strict, wrapped_verdict(raw), reason))
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
    print(f"{'head':38} {'bytes':>5} {'own':>7} {'httptools':>9} {'ht fresh':>8} "
          f"{'llhttp floor':>12} {'ratio':>6}")
    for name, size, own, ht, fresh, bare in rows:
        print(f"{name:38} {size:5d} {own:7.2f} {ht:9.2f} {fresh:8.2f} {bare:12.2f} "
              f"{own / ht:6.2f}")

    corpus = run_corpus()
    print(f"\nhostile corpus ({len(corpus)} cases): verdicts after the checks above the parser;"
          " 'wrapped' is httptools_parse")
    print(f"{'case':28} {'source':22} {'ours':>5} {'llhttp':>7} {'wrapped':>7}  llhttp says")
    disagreements = []
    for case, source, ours, strict, wrapped, reason in corpus:
        mark = "" if strict == ours else "  <-"
        print(f"{case:28} {source:22} {ours:>5} {strict:>7} {wrapped:>7}  {reason[:44]}{mark}")
        if strict != ours:
            disagreements.append((case, ours, strict, wrapped))
    print(f"\ndisagreements, strict llhttp against ours ({len(disagreements)}):")
    for case, ours, strict, wrapped in disagreements:
        fixed = "wrapper agrees" if wrapped == ours else f"wrapper still {wrapped}"
        print(f"  {case:28} ours {ours:>4}  llhttp {strict:>4}  ({fixed})")

    print("\nwhat else the server needs of the parser:")
    for topic, note in probe_capabilities():
        print(f"  {topic}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
