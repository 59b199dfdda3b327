"""The request body as the predictor's `payload`, decided by Content-Type (Cortex's rules).

Called by `runtime.app` on the event loop, only when the predictor declares `payload`. JSON is parsed with
orjson; forms with Starlette's parsers (so the user gets the `FormData` Cortex gave); anything else is bytes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

import orjson
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser


class PayloadError(Exception):
    """The body does not match its Content-Type; `str()` is the message of the 400 response."""


async def parse_payload(body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> object:
    """JSON -> the parsed value; multipart or urlencoded form -> FormData; anything else -> the raw bytes.

    `headers` are the request's raw headers, names lowercased. Raises PayloadError.
    """
    content_type = b""
    for name, value in headers:
        if name == b"content-type":
            content_type = value.lower().lstrip()
            break
    if content_type.startswith(b"application/json"):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"invalid JSON body: {exc}") from None
    if content_type.startswith(b"multipart/form-data"):
        try:
            return await MultiPartParser(Headers(raw=list(headers)), _once(body)).parse()
        except MultiPartException as exc:
            raise PayloadError(f"invalid multipart/form-data body: {exc.message}") from None
    if content_type.startswith(b"application/x-www-form-urlencoded"):
        return await FormParser(Headers(raw=list(headers)), _once(body)).parse()
    return body


def close_payload(payload: object) -> None:
    """Close the temporary files of uploaded form fields (called on a predictor thread once it is done)."""
    if isinstance(payload, FormData):
        for _, value in payload.multi_items():
            if isinstance(value, UploadFile):
                value.file.close()


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body
