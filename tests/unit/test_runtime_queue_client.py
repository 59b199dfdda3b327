"""Unit tests of runtime.queue_client against a real protocol server on a loopback port (no mocks)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from modelport.runtime.queue_client import (
    AsyncLease,
    BatchLease,
    CompletionLease,
    ControlApiError,
    ControlUnreachableError,
    FailOutcome,
    LeaseOutcome,
    QueueClient,
    Stop,
    TaskLease,
    Wait,
    failure_error,
    parse_control_url,
)
from tests.support import free_port, wait_until
from tests.unit.job_protocol_server import ProtocolServer, State


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(max_receive_count=2).running() as running:
        yield running


@pytest.fixture
def client(server: ProtocolServer) -> Iterator[QueueClient]:
    queue_client = QueueClient(server.url, retry_budget=5.0)
    try:
        yield queue_client
    finally:
        queue_client.close()


def test_a_job_is_leased_batch_by_batch_then_completion_then_stop(
    server: ProtocolServer, client: QueueClient
) -> None:
    server.add_batch_job("job1", [[1, 2], [3]], config={"k": "v"})
    assert client.job_spec("job1")["config"] == {"k": "v"}

    first = client.lease_job("job1", worker_id="w1")
    assert isinstance(first, BatchLease)
    assert (first.batch_id, first.items, first.receive_count) == ("0", [1, 2], 1)
    assert first.visibility_seconds == server.visibility_seconds
    second = client.lease_job("job1", worker_id="w1")
    assert isinstance(second, BatchLease) and second.items == [3]
    assert client.lease_job("job1", worker_id="w1") == Wait(retry_after=server.retry_after)

    assert client.extend_job("job1", first.token) is LeaseOutcome.OK
    assert client.ack_job("job1", first.token, seconds=0.5) is LeaseOutcome.OK
    assert client.ack_job("job1", first.token, seconds=0.5) is LeaseOutcome.LOST  # 409, not an exception
    assert client.fail_job("job1", second.token, error="ValueError: no") is FailOutcome.REQUEUED
    assert client.fail_job("job1", second.token, error="again") is FailOutcome.STALE

    retried = client.lease_job("job1", worker_id="w1")
    assert isinstance(retried, BatchLease) and (retried.batch_id, retried.receive_count) == ("1", 2)
    assert client.fail_job("job1", retried.token, error="ValueError: no") is FailOutcome.DEAD

    completion = client.lease_job("job1", worker_id="w1")
    assert isinstance(completion, CompletionLease)
    assert client.ack_job("job1", completion.token, seconds=0.0) is LeaseOutcome.OK
    assert client.lease_job("job1", worker_id="w1") == Stop(reason="the job has finished")
    assert server.item("job1", "0").seconds == 0.5
    assert [call.body["worker_id"] for call in server.calls_of("lease")] == ["w1"] * 6


def test_a_task_lease_carries_its_config(server: ProtocolServer, client: QueueClient) -> None:
    server.add_task("t1", config={"n": 3})
    lease = client.lease_job("t1", worker_id="w1")
    assert isinstance(lease, TaskLease)
    assert (lease.config, lease.receive_count) == ({"n": 3}, 1)


def test_an_expired_lease_is_lost_for_extend_and_ack() -> None:
    with ProtocolServer(visibility_seconds=0.05).running() as server:
        server.add_batch_job("job1", [[1]])
        client = QueueClient(server.url)
        lease = client.lease_job("job1", worker_id="w1")
        assert isinstance(lease, BatchLease)
        wait_until(lambda: server.lease_expired("job1", "0"), message="the lease to expire")
        assert client.extend_job("job1", lease.token) is LeaseOutcome.LOST
        assert client.ack_job("job1", lease.token, seconds=1.0) is LeaseOutcome.LOST
        client.close()


def test_calls_share_one_keep_alive_connection(server: ProtocolServer, client: QueueClient) -> None:
    server.add_batch_job("job1", [[1], [2], [3]])
    for _ in range(3):
        lease = client.lease_job("job1", worker_id="w1")
        assert isinstance(lease, BatchLease)
        client.ack_job("job1", lease.token, seconds=0.1)
    assert server.connections == 1


def test_5xx_and_dropped_connections_are_retried(server: ProtocolServer, client: QueueClient) -> None:
    server.add_batch_job("job1", [[1]])
    server.inject(503, 0, 500)
    lease = client.lease_job("job1", worker_id="w1")
    assert isinstance(lease, BatchLease)
    assert len(server.calls_of("lease")) == 1  # the faults never reached the queue


def test_gives_up_after_the_retry_budget(server: ProtocolServer) -> None:
    server.add_batch_job("job1", [[1]])
    server.inject(*[503] * 100)
    client = QueueClient(server.url, retry_budget=0.3)
    started = time.monotonic()
    with pytest.raises(ControlUnreachableError, match="503") as caught:
        client.lease_job("job1", worker_id="w1")
    assert 0.3 <= time.monotonic() - started < 3
    assert "gave up after 0.3 s" in str(caught.value)


def test_nothing_listening_is_unreachable() -> None:
    client = QueueClient(f"http://127.0.0.1:{free_port()}", retry_budget=0.2)
    with pytest.raises(ControlUnreachableError, match="cannot reach the control API"):
        client.lease_job("job1", worker_id="w1")


def test_an_unknown_job_is_a_control_api_error(client: QueueClient) -> None:
    with pytest.raises(ControlApiError, match="404 job nope not found"):
        client.job_spec("nope")


def test_async_lease_ack_and_fail(server: ProtocolServer, client: QueueClient) -> None:
    assert client.lease_async("demo", worker_id="r1") is None  # 204: empty
    server.add_async_request(
        "demo",
        "req1",
        body=b'{"a": 1}',
        content_type="application/json",
        query="x=1&y=%C3%A9",
        headers={"X-User": "ada", "Accept-Language": "fr"},
    )
    server.add_async_request("demo", "req2", body=b"raw", content_type="application/octet-stream")

    lease = client.lease_async("demo", worker_id="r1")
    assert isinstance(lease, AsyncLease)
    assert (lease.request_id, lease.body, lease.content_type) == ("req1", b'{"a": 1}', "application/json")
    assert lease.query_string == b"x=1&y=%C3%A9"
    assert lease.visibility_seconds == server.visibility_seconds
    assert sorted(lease.headers) == [  # the request's, as the predictor sees them; none of the lease's own
        (b"accept-language", b"fr"),
        (b"content-type", b"application/json"),
        (b"x-modelport-request-id", b"req1"),
        (b"x-user", b"ada"),
    ]
    assert client.extend_async("demo", lease.token) is LeaseOutcome.OK
    outcome = client.ack_async(
        "demo", lease.token, body=b"\x00result", content_type="application/octet-stream"
    )
    assert outcome is LeaseOutcome.OK
    item = server.item("async/demo", "req1")
    assert (item.state, item.result, item.result_type) == (
        State.SUCCEEDED,
        b"\x00result",
        "application/octet-stream",
    )
    assert client.ack_async("demo", lease.token, body=b"", content_type="text/plain") is LeaseOutcome.LOST

    other = client.lease_async("demo", worker_id="r1")
    assert other is not None
    assert client.fail_async("demo", other.token, error="ValueError: x") is FailOutcome.REQUEUED
    assert server.item("async/demo", "req2").errors == ["ValueError: x"]


def test_failure_error_is_the_summary_then_the_traceback_tail() -> None:
    def explode() -> None:
        raise ValueError("cannot score batch 3")

    try:
        explode()
    except ValueError as exc:
        error = failure_error(exc, tail_lines=3)
    lines = error.splitlines()
    assert lines[0] == "ValueError: cannot score batch 3"
    assert len(lines) == 4
    assert "explode" in error


@pytest.mark.parametrize("raw", ["127.0.0.1:8889", "ftp://host", "http://", "http://host:99999"])
def test_bad_control_urls_are_rejected(raw: str) -> None:
    with pytest.raises(ValueError, match="control API"):
        parse_control_url(raw)


def test_a_control_url_keeps_its_path_prefix(server: ProtocolServer) -> None:
    assert parse_control_url("http://127.0.0.1:8889/") == "http://127.0.0.1:8889"
    client = QueueClient(server.url + "/v0")  # the protocol server answers 404 outside /v1
    with pytest.raises(ControlApiError, match="404"):
        client.lease_job("job1", worker_id="w1")
