"""The request body as the predictor's `payload`, decided by Content-Type (Cortex's rules).

Called by `runtime.app` on the event loop, only when the predictor declares `payload`. JSON is parsed with
orjson; forms with Starlette's parsers (so the user gets the `FormData` Cortex gave); anything else is bytes.
Only forms need a coroutine: `parse_body` does the rest at once (the request path's common case).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Sequence

import orjson


class PayloadError(Exception):
    """The body does not match its Content-Type; `str()` is the message of the 400 response."""


def content_type(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The request's Content-Type, lowercased ("" when absent); `headers` are raw, names lowercased."""
    for name, value in headers:
        if name == b"content-type":
            return value.lower().lstrip()
    return b""


def is_form(content_type: bytes) -> bool:
    """Whether the body is a form, which only `parse_payload` (a coroutine) reads."""
    return content_type.startswith((b"multipart/form-data", b"application/x-www-form-urlencoded"))


def parse_body(body: bytes, content_type: bytes) -> object:
    """A body that is not a form: JSON -> the parsed value, anything else -> the raw bytes. Raises
    PayloadError."""
    if content_type.startswith(b"application/json"):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"invalid JSON body: {exc}") from None
    return body


async def parse_payload(body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> object:
    """JSON -> the parsed value; multipart or urlencoded form -> FormData; anything else -> the raw bytes.

    `headers` are the request's raw headers, names lowercased. Raises PayloadError.
    """
    kind = content_type(headers)
    if not is_form(kind):
        return parse_body(body, kind)
    # Imported for forms only: starlette slows every replica's start.
    from starlette.datastructures import Headers
    from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

    if kind.startswith(b"multipart/form-data"):
        try:
            return await MultiPartParser(Headers(raw=list(headers)), _once(body)).parse()
        except MultiPartException as exc:
            raise PayloadError(f"invalid multipart/form-data body: {exc.message}") from None
    return await FormParser(Headers(raw=list(headers)), _once(body)).parse()


def close_payload(payload: object) -> None:
    """Close the temporary files of uploaded form fields (called on a predictor thread once it is done)."""
    module = sys.modules.get("starlette.datastructures")  # a form was parsed only if it is imported
    if module is not None and isinstance(payload, module.FormData):
        for _, value in payload.multi_items():
            if isinstance(value, module.UploadFile):
                value.file.close()


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body
