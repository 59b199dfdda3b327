"""Unit tests of runtime.serialize: predict's return value -> the HTTP response."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from starlette.background import BackgroundTask
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from modelport.runtime.serialize import UnserializableError, to_response

ID = [(b"x-request-id", b"abc")]


def test_bytes_are_octet_stream() -> None:
    response = to_response(b"\x00\x01", headers=ID)
    assert (response.status, response.body, response.content_type) == (
        200,
        b"\x00\x01",
        b"application/octet-stream",
    )
    assert list(response.headers) == ID
    assert to_response(bytearray(b"ab")).body == b"ab"


def test_str_is_utf8_text() -> None:
    response = to_response("héllo")
    assert response.status == 200
    assert response.body == "héllo".encode()
    assert response.content_type == b"text/plain; charset=utf-8"


def test_other_values_are_json() -> None:
    response = to_response({"label": "setosa", "scores": [0.1, 0.9], "ok": True, "none": None}, headers=ID)
    assert response.content_type == b"application/json"
    assert orjson.loads(response.body) == {"label": "setosa", "scores": [0.1, 0.9], "ok": True, "none": None}
    assert list(response.headers) == ID
    assert to_response([1, 2]).body == b"[1,2]"
    assert to_response(3).body == b"3"
    assert to_response(None).body == b"null"


def test_int_keys_are_written_as_strings_like_json_dumps() -> None:
    assert orjson.loads(to_response({1: "a", 2: "b"}).body) == {"1": "a", "2": "b"}


def test_numpy_scalars_and_arrays() -> None:
    value = {
        "f64": np.float64(0.5),
        "f32": np.float32(1.5),
        "f16": np.float16(2.5),
        "i64": np.int64(7),
        "bool": np.bool_(True),
        "str": np.str_("label"),
        "array": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "f16_array": np.array([0.5, 1.0], dtype=np.float16),
        "non_contiguous": np.arange(6).reshape(2, 3).T,
        "strings": np.array(["a", "b"]),
    }
    assert orjson.loads(to_response(value).body) == {
        "f64": 0.5,
        "f32": 1.5,
        "f16": 2.5,
        "i64": 7,
        "bool": True,
        "str": "label",
        "array": [[1, 2], [3, 4]],
        "f16_array": [0.5, 1.0],
        "non_contiguous": [[0, 3], [1, 4], [2, 5]],
        "strings": ["a", "b"],
    }
    assert orjson.loads(to_response(np.array([1.5, 2.5])).body) == [1.5, 2.5]
    assert orjson.loads(to_response(np.int64(3)).body) == 3


class Model:
    pass


def test_an_unserializable_value_names_its_type_and_the_fix() -> None:
    with pytest.raises(UnserializableError) as caught:
        to_response(Model())
    message = str(caught.value)
    assert caught.value.type_name == f"{__name__}.Model"
    assert message.startswith(f"predict returned a value of type {__name__}.Model that cannot be serialized")
    assert message.endswith("return a JSON-serializable value, bytes, str or a starlette Response")


def test_an_unserializable_value_inside_a_container_names_both() -> None:
    with pytest.raises(UnserializableError) as caught:
        to_response({"model": {1, 2}})
    message = str(caught.value)
    assert "value of type dict" in message and "set" in message


def test_starlette_response_passes_through_with_status_and_headers() -> None:
    user = JSONResponse({"error": "no such label"}, status_code=404, headers={"x-custom": "1"})
    response = to_response(user, headers=ID)
    assert response.status == 404
    assert response.body == b'{"error":"no such label"}'
    assert response.content_type is None  # the user's content-type header is passed as is
    headers = dict(response.headers)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-custom"] == b"1"
    assert headers[b"x-request-id"] == b"abc"
    assert b"content-length" not in headers  # the server computes it


def test_a_request_id_set_by_the_user_is_kept() -> None:
    response = to_response(PlainTextResponse("hi", headers={"x-request-id": "mine"}), headers=ID)
    assert [value for name, value in response.headers if name == b"x-request-id"] == [b"mine"]
    assert dict(response.headers)[b"content-type"] == b"text/plain; charset=utf-8"


def test_plain_response_with_custom_media_type() -> None:
    response = to_response(Response(b"<p/>", media_type="text/html", status_code=201))
    assert (response.status, response.body) == (201, b"<p/>")
    assert dict(response.headers)[b"content-type"] == b"text/html; charset=utf-8"


def test_streaming_response_from_a_sync_iterator_is_consumed() -> None:
    def chunks() -> Iterator[str | bytes]:
        yield "a"
        yield b"b"
        yield "é"

    response = to_response(StreamingResponse(chunks(), media_type="text/plain"))
    assert response.body == "abé".encode()
    assert response.status == 200


def test_streaming_response_from_an_async_iterator_is_consumed() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"x", b"y", b"z"):
            yield part

    response = to_response(StreamingResponse(chunks(), status_code=202))
    assert (response.status, response.body) == (202, b"xyz")


def test_file_response_is_read(tmp_path: Path) -> None:
    path = tmp_path / "result.csv"
    path.write_bytes(b"a,b\n1,2\n")
    response = to_response(FileResponse(path, filename="result.csv"))
    assert response.body == b"a,b\n1,2\n"
    headers = dict(response.headers)
    assert headers[b"content-type"].startswith(b"text/csv")
    assert b"attachment" in headers[b"content-disposition"]


def test_background_task_is_not_run_while_serializing() -> None:
    ran: list[int] = []
    to_response(PlainTextResponse("x", background=BackgroundTask(ran.append, 1)))
    assert ran == []
