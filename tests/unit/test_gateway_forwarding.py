"""The head the gateway sends to a replica (gateway.forwarding.forward_request), parsed with httptools."""

from __future__ import annotations

import re

import httptools  # type: ignore[import-untyped,unused-ignore]

from modelport.gateway.forwarding import forward_request
from modelport.http.server import Request


class _Parsed:
    def __init__(self, head: bytes) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        parser = httptools.HttpRequestParser(self)
        parser.feed_data(head)
        self.method = parser.get_method()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


def request(
    headers: list[tuple[bytes, bytes]],
    *,
    body: bytes = b"{}",
    query: bytes = b"",
    client: tuple[str, int] | None,
) -> Request:
    return Request(method="POST", path="/iris", query_string=query, headers=headers, body=body, client=client)


def test_keeps_end_to_end_headers_and_the_host_and_adds_forwarding_headers() -> None:
    forwarded = forward_request(
        request(
            [
                (b"host", b"api.example.com:8888"),
                (b"content-type", b"application/json"),
                (b"x-custom", b"Kept As Is"),
                (b"x-request-id", b"client-42"),
                (b"content-length", b"2"),
                (b"proxy-authorization", b"secret"),
                (b"keep-alive", b"timeout=5"),
            ],
            query=b"explain=1",
            client=("10.1.2.3", 50000),
        )
    )
    parsed = _Parsed(forwarded.head)
    assert (parsed.method, parsed.url) == (b"POST", b"/predict?explain=1")
    assert forwarded.head.startswith(b"POST /predict?explain=1 HTTP/1.1\r\nhost: api.example.com:8888\r\n")
    assert forwarded.head.endswith(b"\r\n\r\n")
    assert parsed.headers == [
        (b"host", b"api.example.com:8888"),
        (b"content-type", b"application/json"),
        (b"x-custom", b"Kept As Is"),
        (b"x-request-id", b"client-42"),
        (b"x-forwarded-for", b"10.1.2.3"),
        (b"x-forwarded-host", b"api.example.com:8888"),
        (b"x-forwarded-proto", b"http"),
        (b"content-length", b"2"),
    ]
    assert (forwarded.request_id, forwarded.has_origin) == (b"client-42", False)


def test_appends_the_client_to_x_forwarded_for_and_replaces_the_other_forwarding_headers() -> None:
    forwarded = forward_request(
        request(
            [
                (b"host", b"gw"),
                (b"x-forwarded-for", b"203.0.113.7"),
                (b"x-forwarded-for", b"198.51.100.1, 10.0.0.1"),
                (b"x-forwarded-host", b"spoofed"),
                (b"x-forwarded-proto", b"https"),
                (b"origin", b"https://app.example"),
            ],
            client=("::1", 50000),
        )
    )
    parsed = _Parsed(forwarded.head)
    assert parsed.values(b"x-forwarded-for") == [b"203.0.113.7, 198.51.100.1, 10.0.0.1, ::1"]
    assert parsed.values(b"x-forwarded-host") == [b"gw"]
    assert parsed.values(b"x-forwarded-proto") == [b"http"]
    assert parsed.values(b"origin") == [b"https://app.example"]
    assert forwarded.has_origin
    assert re.fullmatch(rb"[0-9a-f]{32}", forwarded.request_id)
    assert parsed.values(b"x-request-id") == [forwarded.request_id]


def test_without_host_or_client_address_sends_an_empty_host_and_no_invented_values() -> None:
    forwarded = forward_request(request([], body=b"", client=None))
    parsed = _Parsed(forwarded.head)
    assert parsed.values(b"host") == [b""]
    assert parsed.values(b"x-forwarded-for") == []
    assert parsed.values(b"x-forwarded-host") == []
    assert parsed.values(b"content-length") == [b"0"]


def test_headers_named_in_connection_are_not_forwarded() -> None:
    forwarded = forward_request(
        request(
            [
                (b"host", b"gw"),
                (b"connection", b"keep-alive, X-Hop"),
                (b"x-hop", b"1"),
                (b"x-end", b"2"),
                (b"te", b"trailers"),
                (b"transfer-encoding", b"chunked"),
            ],
            client=("127.0.0.1", 1),
        )
    )
    names = [name for name, _ in _Parsed(forwarded.head).headers]
    assert b"x-end" in names
    for dropped in (b"connection", b"x-hop", b"te", b"transfer-encoding"):
        assert dropped not in names
