"""Unit tests of runtime.payload: the request body as `payload`, by Content-Type."""

from __future__ import annotations

import asyncio

import pytest
from starlette.datastructures import FormData, UploadFile

from modelport.runtime.payload import PayloadError, close_payload, parse_payload


def parse(body: bytes, content_type: str | None) -> object:
    headers = [(b"content-type", content_type.encode())] if content_type is not None else []
    return asyncio.run(parse_payload(body, [(b"host", b"x"), *headers]))


def test_json_is_parsed() -> None:
    assert parse(b'{"a": [1, 2.5, "x", null]}', "application/json") == {"a": [1, 2.5, "x", None]}
    assert parse(b"[1]", "Application/JSON; charset=utf-8") == [1]
    assert parse(b'"text"', "application/json-patch+json") == "text"  # application/json* (Cortex)


@pytest.mark.parametrize("body", [b"{bad", b"", b'{"a": 1} trailing'])
def test_invalid_json_is_a_payload_error_with_the_reason(body: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse(body, "application/json")
    message = str(caught.value)
    assert message.startswith("invalid JSON body: ")
    assert len(message) > len("invalid JSON body: ")


def test_urlencoded_form_is_form_data() -> None:
    form = parse(b"a=1&b=two+words&a=3", "application/x-www-form-urlencoded")
    assert isinstance(form, FormData)
    assert form.getlist("a") == ["1", "3"]
    assert form["b"] == "two words"


def test_multipart_form_with_a_file() -> None:
    boundary = "XyZ"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="field"\r\n\r\n'
        "value\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
        "\x00\x01binary\r\n"
        f"--{boundary}--\r\n"
    ).encode("latin-1")
    form = parse(body, f"multipart/form-data; boundary={boundary}")
    assert isinstance(form, FormData)
    assert form["field"] == "value"
    upload = form["image"]
    assert isinstance(upload, UploadFile)
    assert upload.filename == "a.bin"
    assert upload.file.read() == b"\x00\x01binary"
    close_payload(form)
    assert upload.file.closed


def test_multipart_without_boundary_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="invalid multipart/form-data body: Missing boundary"):
        parse(b"whatever", "multipart/form-data")


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain", "image/png"])
def test_anything_else_is_the_raw_bytes(content_type: str | None) -> None:
    assert parse(b"\x89PNG raw", content_type) == b"\x89PNG raw"


def test_close_payload_ignores_other_payloads() -> None:
    close_payload({"a": 1})
    close_payload(b"bytes")
    close_payload(None)
