"""The request head the gateway sends to a replica: the client's end-to-end headers, Host, X-Forwarded-*.

Built by gateway.app.Gateway once per forwarded request (retries reuse it) in one pass over the client's
headers, which also notes what the response side needs (the request id, whether the client sent Origin).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from modelport.http.server import Request

# Meaningful for one connection only (RFC 9110 7.6.1; `proxy-*` is checked by prefix), the framing the
# gateway sets itself, and the headers it rewrites: none of them is copied as the client sent it.
_REWRITTEN = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"content-length",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    )
)
# Connection options that name no header field.
_CONNECTION_OPTIONS = frozenset((b"close", b"keep-alive"))


# Request ids: unique per gateway process without a uuid4 (and its getrandom syscall) per request: a random
# 64-bit prefix drawn once, then a counter. 32 hex characters like a uuid4's hex.
_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> bytes:
    return b"%s%016x" % (_ID_PREFIX, next(_ID_COUNTER))


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    head: bytes  # request line and headers, through the blank line; the body follows as the client sent it
    request_id: bytes  # the client's x-request-id, or one generated here
    has_origin: bool  # the client sent Origin: every answer gets access-control-allow-origin


def forward_request(request: Request, *, path: bytes = b"/predict") -> ForwardedRequest:
    """The head of `request` as a replica receives it at `path`."""
    host = request_id = forwarded_for = connection = None
    has_origin = False
    lines = [b""]  # [0]: the request line and Host, filled in once Host is known
    for name, value in request.headers:
        if name in _REWRITTEN:
            if name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif name == b"connection":
                connection = value
        elif not name.startswith(b"proxy-"):
            if name == b"origin":
                has_origin = True
            elif name == b"x-request-id" and request_id is None:
                request_id = value
            lines.append(name + b": " + value + b"\r\n")
    if connection is not None:
        # Headers the client named in `Connection` are hop-by-hop too (rare: a second pass only then).
        listed = {token.strip().lower() for token in connection.split(b",")} - _CONNECTION_OPTIONS
        if listed:
            lines = [line for line in lines if line.partition(b":")[0] not in listed]
    if request_id is None:
        request_id = new_request_id()
        lines.append(b"x-request-id: " + request_id + b"\r\n")

    query = request.query_string
    target = path + b"?" + query if query else path
    # Without a Host from the client there is no authority to pass on: RFC 9112 3.2 asks for an empty one.
    lines[0] = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (request.method.encode(), target, host or b"")
    client = request.client
    if client is not None:
        address = client[0].encode()
        forwarded_for = address if forwarded_for is None else forwarded_for + b", " + address
    if forwarded_for is not None:
        lines.append(b"x-forwarded-for: " + forwarded_for + b"\r\n")
    if host:
        lines.append(b"x-forwarded-host: " + host + b"\r\n")
    lines.append(b"x-forwarded-proto: http\r\ncontent-length: %d\r\n\r\n" % len(request.body))
    return ForwardedRequest(head=b"".join(lines), request_id=request_id, has_origin=has_origin)
