"""What `predict` returned as an HTTP response: bytes, str, a Starlette Response as is, anything else as JSON.

Called by `runtime.app` on the predictor thread that ran `predict`, so serializing a large array (or running
a StreamingResponse's iterator, which is user code) never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import orjson

from modelport.http.server import Response

if TYPE_CHECKING:
    import starlette.responses

OCTET_STREAM = b"application/octet-stream"
TEXT_PLAIN = b"text/plain; charset=utf-8"
JSON = b"application/json"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # int keys as json.dumps writes them
_COMPUTED_HEADERS = frozenset({b"content-length", b"transfer-encoding"})  # the server frames the body itself


class UnserializableError(Exception):
    """`predict` returned something that is not bytes, str, a Response or JSON-serializable."""

    def __init__(self, value: object, reason: str) -> None:
        self.type_name = _type_name(value)
        super().__init__(
            f"predict returned a value of type {self.type_name} that cannot be serialized to JSON "
            f"({reason}); return a JSON-serializable value, bytes, str or a starlette Response"
        )


def to_response(value: object, *, headers: Sequence[tuple[bytes, bytes]] = ()) -> Response:
    """The response for `value`, with `headers` added. Raises UnserializableError.

    A StreamingResponse is consumed fully here and sent with a content-length (the server does not stream);
    a FileResponse's file is read. A Response's `background` task is not run here (see `runtime.app`).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return Response(status=200, body=bytes(value), content_type=OCTET_STREAM, headers=headers)
    if isinstance(value, str):
        return Response(status=200, body=value.encode(), content_type=TEXT_PLAIN, headers=headers)
    if (passed := starlette_response(value)) is not None:
        return _passthrough(passed, headers)
    try:
        body = orjson.dumps(value, default=_numpy_default, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise UnserializableError(value, str(exc)) from None
    return Response(status=200, body=body, content_type=JSON, headers=headers)


def starlette_response(value: object) -> starlette.responses.Response | None:
    """`value` when it is a Starlette Response, else None.

    Looked up without importing starlette (it slows every replica's start): a value can only be a Starlette
    Response once user code has imported starlette.responses.
    """
    module = sys.modules.get("starlette.responses")
    if module is not None and isinstance(value, module.Response):
        return cast("starlette.responses.Response", value)
    return None


def _numpy_default(value: object) -> object:
    # What OPT_SERIALIZE_NUMPY leaves over: numpy scalars (np.float64 is native, np.float16 or np.str_
    # arrays are not) and arrays of unsupported dtypes or layouts. numpy is only consulted when the user's
    # code imported it: a value cannot be a numpy object otherwise, and the replica starts faster.
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.generic):
            return value.item()
        if isinstance(value, numpy.ndarray):
            return value.tolist()
    raise TypeError(f"Type is not JSON serializable: {_type_name(value)}")


def _passthrough(response: starlette.responses.Response, extra: Sequence[tuple[bytes, bytes]]) -> Response:
    module = sys.modules["starlette.responses"]
    if isinstance(response, module.StreamingResponse):
        body = asyncio.run(_collect(response.body_iterator, response.charset))
    elif isinstance(response, module.FileResponse):
        body = Path(response.path).read_bytes()
    else:
        body = bytes(response.body)
    headers = [(name, value) for name, value in response.raw_headers if name not in _COMPUTED_HEADERS]
    present = {name for name, _ in headers}
    headers.extend((name, value) for name, value in extra if name not in present)
    return Response(status=response.status_code, body=body, content_type=None, headers=headers)


async def _collect(iterator: AsyncIterable[str | bytes | memoryview], charset: str) -> bytes:
    # Its own event loop on this predictor thread: a synchronous iterator is wrapped by Starlette to run in
    # a thread pool of that loop, an async one runs here; neither touches the server's loop.
    chunks = [chunk.encode(charset) if isinstance(chunk, str) else bytes(chunk) async for chunk in iterator]
    return b"".join(chunks)


def _type_name(value: object) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
