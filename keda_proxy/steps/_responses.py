"""
Responses the proxy writes itself: errors, static routes, placeholders.
"""

from __future__ import annotations

import mimetypes
import posixpath
from typing import Optional, Tuple
from urllib.parse import unquote

from twisted.logger import Logger
from twisted.web import http

from keda_proxy.state._model import Route, StaticResponse
from keda_proxy.state._store import Snapshot
from keda_proxy.wire._status import status_text

log = Logger()

DEFAULT_CONFIGMAP_KEY = "index.html"


#: The body Go's interceptor answers a request past the cold-start pending
#: limit with (with 503, as ``http.Error`` writes it).
TOO_MANY_PENDING = b"too many pending requests"


def write_error(downstream, code: int, message: bytes = None) -> None:
    """A plain-text error exactly like Go's ``http.Error``: C{message} (by
    default the status text) and a newline, ``nosniff``."""
    if downstream.finished:
        return
    body = (status_text(code) if message is None else message) + b"\n"
    downstream.answer(code, [(b"Content-Type", b"text/plain; charset=utf-8"),
                             (b"X-Content-Type-Options", b"nosniff")], body)


class BodyError(Exception):
    """A static body that cannot be produced (missing ConfigMap or key)."""


def configmap_key_for_path(path: str) -> str:
    """The ConfigMap key a path maps to: the path without its leading
    slash, ``index.html`` for the root."""
    key = unquote(path).lstrip("/")
    return key or DEFAULT_CONFIGMAP_KEY


def resolve_body(route: Route, response: StaticResponse, snapshot: Snapshot,
                 path: str) -> Tuple[str, Optional[str]]:
    """The body and the content type guessed from the ConfigMap key.

    An explicit key that is missing is an error (500); a key derived from
    the path that is missing gives an empty body, so that a missing
    ``/favicon.ico`` degrades gracefully.
    """
    if response.body is not None:
        return response.body, None
    ref = response.body_from_configmap
    if ref is None:
        return "", None
    cm = snapshot.configmaps.get(f"{route.namespace}/{ref.name}")
    if cm is None:
        raise BodyError(
            f"ConfigMap {route.namespace}/{ref.name} not found: ensure it exists "
            f"and has the label http.keda.sh/response-body=true")
    key = ref.key or configmap_key_for_path(path)
    if key not in cm.data:
        if ref.key:
            raise BodyError(f"key {key!r} not found in ConfigMap {route.namespace}/{ref.name}")
        return "", None
    content_type, _ = mimetypes.guess_type(posixpath.basename(key))
    if content_type and content_type.startswith("text/") and "charset" not in content_type:
        content_type += "; charset=utf-8"
    return cm.data[key], content_type


def write_static(downstream, route: Route, response: StaticResponse, snapshot: Snapshot,
                 path: str, default_code: int) -> None:
    """Serve a static route or placeholder response."""
    try:
        body, content_type = resolve_body(route, response, snapshot, path)
    except BodyError as e:
        log.error("static response for {route}: {error}", route=route.key, error=str(e))
        write_error(downstream, http.INTERNAL_SERVER_ERROR)
        return
    fields = [(name.encode("latin-1"), value.encode("latin-1"))
              for name, value in response.headers
              if name.lower() != "content-length"]
    data = body.encode("utf-8")
    if not any(name.lower() == b"content-type" for name, _ in fields):
        content_type = content_type or (sniff_content_type(data) if data else None)
        if content_type:
            fields.append((b"Content-Type", content_type.encode("ascii")))
    downstream.answer(response.status_code or default_code, fields, data)


#: Go's DetectContentType HTML signatures (matched case-insensitively after
#: leading whitespace, and followed by a space or ``>``)
_HTML_SIGNATURES = (b"<!DOCTYPE HTML", b"<HTML", b"<HEAD", b"<SCRIPT", b"<IFRAME", b"<H1",
                    b"<DIV", b"<FONT", b"<TABLE", b"<A", b"<STYLE", b"<TITLE", b"<B",
                    b"<BODY", b"<BR", b"<P", b"<!--")
_BINARY = frozenset(list(range(0x00, 0x09)) + [0x0B] + list(range(0x0E, 0x1B))
                    + list(range(0x1C, 0x20)))


def sniff_content_type(data: bytes) -> str:
    """The type Go's server would give a generated body without one, for
    the cases a static page meets: HTML, XML, PDF, other text, or binary
    (Go's ``http.DetectContentType`` also knows images, fonts, archives
    and more; they get ``application/octet-stream`` here)."""
    head = data[:512]
    text = head.lstrip(b"\t\n\x0c\r ")
    upper = text[:16].upper()
    for sig in _HTML_SIGNATURES:
        if upper.startswith(sig) and text[len(sig):len(sig) + 1] in (b" ", b">"):
            return "text/html; charset=utf-8"
    if text.startswith(b"<?xml"):
        return "text/xml; charset=utf-8"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if not _BINARY.isdisjoint(head):  # any control byte, checked in C
        return "application/octet-stream"
    return "text/plain; charset=utf-8"
