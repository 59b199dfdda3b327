"""Cross-origin access to the gateway: any origin may call every endpoint, as Cortex allowed.

Used by gateway.app.Gateway: `preflight` answers `OPTIONS <endpoint>`; `allow_any_origin` marks a response to
a request that carried `Origin` (only those: the common path pays nothing).
"""

from __future__ import annotations

from modelport.http.server import Request, Response

ALLOWED_METHODS = b"POST, GET, OPTIONS"
_ALLOW_ORIGIN = (b"access-control-allow-origin", b"*")
_ALLOW_ORIGIN_LINE = b"access-control-allow-origin: *\r\n"
_ALLOW_ORIGIN_NAME = b"\naccess-control-allow-origin:"


def preflight(request: Request, *, allow: bytes, methods: bytes = ALLOWED_METHODS) -> Response:
    """204 to a CORS preflight (or any OPTIONS): what a browser may send (`methods`), for 10 minutes."""
    requested = request.header(b"access-control-request-headers")
    return Response(
        status=204,
        content_type=None,
        headers=(
            _ALLOW_ORIGIN,
            (b"access-control-allow-methods", methods),
            (b"access-control-allow-headers", requested or b"*"),
            (b"access-control-max-age", b"600"),
            (b"allow", allow),
        ),
    )


def allow_any_origin(response: Response) -> Response:
    """Add `access-control-allow-origin: *` to `response`, built or raw (a replica's bytes passed through)."""
    raw = response.raw
    if raw is None:
        response.headers = (*response.headers, _ALLOW_ORIGIN)
        return response
    status_end = raw.find(b"\r\n") + 2
    head_end = raw.find(b"\r\n\r\n")
    if status_end < 2 or head_end < 0:
        return response  # not a response head: passed on untouched
    # A replica that answers CORS itself keeps its answer: two values would make browsers refuse both.
    if _ALLOW_ORIGIN_NAME not in raw[status_end - 1 : head_end + 2].lower():
        response.raw = raw[:status_end] + _ALLOW_ORIGIN_LINE + raw[status_end:]
    return response
