"""Cross-origin answers (gateway.cors): the preflight, and the header added to built and passed-through
responses."""

from __future__ import annotations

from modelport.gateway.cors import allow_any_origin, preflight
from modelport.http.server import Request, Response, encode_response, json_response


def options(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request(method="OPTIONS", path="/iris", query_string=b"", headers=headers, body=b"")


def test_preflight_allows_any_origin_the_methods_and_the_requested_headers() -> None:
    asked = options(
        [(b"origin", b"https://app"), (b"access-control-request-headers", b"content-type, x-key")]
    )
    response = preflight(asked, allow=b"GET, POST")
    assert response.status == 204
    assert dict(response.headers) == {
        b"access-control-allow-origin": b"*",
        b"access-control-allow-methods": b"POST, GET, OPTIONS",
        b"access-control-allow-headers": b"content-type, x-key",
        b"access-control-max-age": b"600",
        b"allow": b"GET, POST",
    }
    wire = encode_response(response, keep_alive=True)
    assert wire.endswith(b"\r\n\r\n")  # no body
    assert b"\r\ncontent-type:" not in wire
    assert dict(preflight(options([]), allow=b"GET").headers)[b"access-control-allow-headers"] == b"*"


def test_a_built_response_gets_the_header_and_keeps_its_own() -> None:
    response = allow_any_origin(json_response(503, {"error": "x"}, headers=((b"retry-after", b"1"),)))
    assert list(response.headers) == [(b"retry-after", b"1"), (b"access-control-allow-origin", b"*")]


def test_a_raw_response_gets_the_header_right_after_its_status_line() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    response = allow_any_origin(Response(status=200, raw=raw))
    assert response.raw == b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: *\r\ncontent-length: 2\r\n\r\nok"
    bare = allow_any_origin(Response(status=204, raw=b"HTTP/1.1 204 No Content\r\n\r\n"))
    assert bare.raw == b"HTTP/1.1 204 No Content\r\naccess-control-allow-origin: *\r\n\r\n"


def test_a_raw_response_that_answers_cors_itself_is_left_alone() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nAccess-Control-Allow-Origin: https://app\r\n\r\nok"
    assert allow_any_origin(Response(status=200, raw=raw)).raw == raw
    # The same words in the body are not a header.
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 31\r\n\r\n\naccess-control-allow-origin: x"
    assert allow_any_origin(Response(status=200, raw=raw)).raw != raw
