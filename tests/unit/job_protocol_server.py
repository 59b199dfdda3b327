"""A real HTTP server speaking the worker protocol of docs/jobs.md, over an in-memory queue, for tests.

Used by the runtime's queue client tests and the worker / async consumer integration tests in place of the
control API: leases expire on the wall clock (time.monotonic), every call is recorded, and faults (5xx
answers, dropped connections) can be injected. Not a model of the SQLite store: only the protocol.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class State(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


@dataclass
class Item:
    """One queue item: a batch (items), a task (config), a completion, or an async request (body)."""

    item_id: str
    payload: Any = None
    body: bytes = b""
    content_type: str = "application/json"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # an async request's, replayed with its lease
    state: State = State.QUEUED
    token: str | None = None
    expires_at: float = 0.0
    receive_count: int = 0
    seconds: float | None = None  # from the ack
    result: bytes | None = None
    result_type: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Call:
    """One protocol request as the server saw it."""

    route: str  # "spec", "lease", "extend", "ack", "fail"
    queue: str  # the job id, or "async/<api>"
    item_id: str | None  # the item the call concerned (None for a lease that got nothing)
    answer: str  # "batch", "wait", "stop", "ok", "lost", "requeued", "dead", "stale", "empty", ...
    body: Mapping[str, Any]


@dataclass
class _Queue:
    kind: str  # "batch", "task" or "async"
    items: list[Item]
    completion: Item | None = None
    job_spec: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None  # why the job ended early


class ProtocolServer:
    """The control API's worker routes on a free loopback port; start with `running()`."""

    def __init__(
        self, *, visibility_seconds: float = 30.0, max_receive_count: int = 3, retry_after: float = 0.05
    ) -> None:
        self.visibility_seconds = visibility_seconds
        self.max_receive_count = max_receive_count
        self.retry_after = retry_after
        self.calls: list[Call] = []
        self._queues: dict[str, _Queue] = {}
        self._tokens: dict[str, Item] = {}
        self.connections = 0  # TCP connections accepted (keep-alive reuses one)
        self._faults: list[int] = []  # statuses to answer the next requests with; 0 drops the connection
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- setting up ----

    @property
    def url(self) -> str:
        assert self._server is not None, "use running()"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @contextmanager
    def running(self) -> Iterator[ProtocolServer]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="protocol-server", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def add_batch_job(
        self,
        job_id: str,
        batches: list[list[Any]],
        *,
        config: Mapping[str, Any] | None = None,
        completion: bool = True,
    ) -> None:
        items = [Item(item_id=str(index), payload=batch) for index, batch in enumerate(batches)]
        job_spec = {
            "job_id": job_id,
            "api_name": "demo",
            "kind": "BatchAPI",
            "config": dict(config or {}),
            "workers": 1,
            "total_batch_count": len(batches),
            "start_time": 1_780_000_000.0,
            "timeout": None,
            "max_receive_count": self.max_receive_count,
        }
        with self._lock:
            self._queues[job_id] = _Queue(
                kind="batch",
                items=items,
                completion=Item(item_id="complete") if completion else None,
                job_spec=job_spec,
            )

    def add_task(self, job_id: str, *, config: Mapping[str, Any]) -> None:
        with self._lock:
            self._queues[job_id] = _Queue(kind="task", items=[Item(item_id="task", payload=dict(config))])

    def add_async_request(
        self,
        api: str,
        request_id: str,
        *,
        body: bytes,
        content_type: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        item = Item(
            item_id=request_id, body=body, content_type=content_type, query=query, headers=dict(headers or {})
        )
        with self._lock:
            self._queues.setdefault(f"async/{api}", _Queue(kind="async", items=[])).items.append(item)

    def stop_job(self, job_id: str, reason: str) -> None:
        with self._lock:
            self._queues[job_id].stopped = reason

    def inject(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (0: close the connection without an answer)."""
        with self._lock:
            self._faults.extend(statuses)

    # ---- reading ----

    def item(self, queue: str, item_id: str) -> Item:
        with self._lock:
            found = self._queues[queue]
            candidates = [*found.items, *([found.completion] if found.completion else [])]
            return next(item for item in candidates if item.item_id == item_id)

    def items(self, queue: str) -> list[Item]:
        with self._lock:
            return list(self._queues[queue].items)

    def calls_of(self, route: str, queue: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.route == route and (queue is None or c.queue == queue)]

    def lease_expired(self, queue: str, item_id: str) -> bool:
        item = self.item(queue, item_id)
        return item.state is State.LEASED and item.expires_at <= time.monotonic()

    def settled(self, queue: str) -> bool:
        with self._lock:
            found = self._queues[queue]
            everything = [*found.items, *([found.completion] if found.completion else [])]
            return all(item.state in (State.SUCCEEDED, State.DEAD) for item in everything)

    # ---- the protocol (called by the handler, under the lock) ----

    def _record(
        self, route: str, queue: str, item: Item | None, answer: str, body: Mapping[str, Any]
    ) -> None:
        self.calls.append(Call(route, queue, item.item_id if item else None, answer, dict(body)))

    def count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def next_fault(self) -> int | None:
        """The injected answer for the request being handled, if any (see `inject`)."""
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _lease(self, queue: _Queue, now: float) -> Item | None:
        """The first leasable item (queued, or leased and expired with attempts left), leased now."""
        for item in queue.items:
            if item.state is State.LEASED and item.expires_at <= now:
                if item.receive_count >= self.max_receive_count:
                    item.state = State.DEAD
                    item.errors.append(f"lease expired {item.receive_count} times")
                    continue
                item.state = State.QUEUED
            if item.state is State.QUEUED:
                return self._take(item, now)
        return None

    def _take(self, item: Item, now: float) -> Item:
        if item.token is not None:
            self._tokens.pop(item.token, None)
        item.token = uuid.uuid4().hex
        item.state = State.LEASED
        item.receive_count += 1
        item.expires_at = now + self.visibility_seconds
        self._tokens[item.token] = item
        return item

    def job_lease(self, job_id: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            queue = self._queues.get(job_id)
            if queue is None:
                return 404, {"error": f"job {job_id} not found"}
            if queue.stopped is not None:
                self._record("lease", job_id, None, "stop", body)
                return 200, {"type": "stop", "reason": queue.stopped}
            item = self._lease(queue, now)
            if item is not None:
                self._record("lease", job_id, item, queue.kind, body)
                common = {
                    "token": item.token,
                    "receive_count": item.receive_count,
                    "visibility_seconds": self.visibility_seconds,
                }
                if queue.kind == "task":
                    return 200, {"type": "task", "config": item.payload, **common}
                return 200, {"type": "batch", "batch_id": item.item_id, "items": item.payload, **common}
            if any(item.state is State.LEASED for item in queue.items):
                self._record("lease", job_id, None, "wait", body)
                return 200, {"type": "wait", "retry_after": self.retry_after}
            completion = queue.completion
            if completion is not None and completion.state in (State.QUEUED, State.LEASED):
                if completion.state is State.LEASED and completion.expires_at > now:
                    self._record("lease", job_id, None, "wait", body)
                    return 200, {"type": "wait", "retry_after": self.retry_after}
                self._take(completion, now)
                self._record("lease", job_id, completion, "on_job_complete", body)
                return 200, {
                    "type": "on_job_complete",
                    "token": completion.token,
                    "visibility_seconds": self.visibility_seconds,
                }
            self._record("lease", job_id, None, "stop", body)
            return 200, {"type": "stop", "reason": "the job has finished"}

    def async_lease(self, api: str, body: Mapping[str, Any]) -> tuple[int, Item | None]:
        with self._lock:
            queue = self._queues.get(f"async/{api}")
            item = self._lease(queue, time.monotonic()) if queue is not None else None
            self._record("lease", f"async/{api}", item, "async" if item else "empty", body)
            return (200, item) if item else (204, None)

    def extend(self, queue: str, token: str, body: Mapping[str, Any]) -> int:
        now = time.monotonic()
        with self._lock:
            item = self._live(token, now)
            if item is None:
                self._record("extend", queue, None, "lost", body)
                return 409
            item.expires_at = now + self.visibility_seconds
            self._record("extend", queue, item, "ok", body)
            return 200

    def ack(
        self,
        queue: str,
        token: str,
        body: Mapping[str, Any],
        *,
        result: bytes | None,
        result_type: str | None,
    ) -> int:
        with self._lock:
            item = self._live(token, time.monotonic())
            if item is None:
                self._record("ack", queue, None, "lost", body)
                return 409
            item.state = State.SUCCEEDED
            item.seconds = body.get("seconds")
            item.result, item.result_type = result, result_type
            self._tokens.pop(token, None)
            self._record("ack", queue, item, "ok", body)
            return 200

    def fail(self, queue: str, token: str, error: str, body: Mapping[str, Any]) -> str:
        with self._lock:
            item = self._live(token, time.monotonic())
            if item is None:
                self._record("fail", queue, None, "stale", body)
                return "stale"
            item.errors.append(error)
            self._tokens.pop(token, None)
            item.state = State.DEAD if item.receive_count >= self.max_receive_count else State.QUEUED
            outcome = "dead" if item.state is State.DEAD else "requeued"
            self._record("fail", queue, item, outcome, body)
            return outcome

    def spec(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            queue = self._queues.get(job_id)
            self._record("spec", job_id, None, "ok" if queue else "missing", {})
            return dict(queue.job_spec) if queue is not None else None

    def _live(self, token: str, now: float) -> Item | None:
        item = self._tokens.get(token)
        if item is None or item.state is not State.LEASED or item.expires_at <= now:
            return None
        return item


def _handler_for(server: ProtocolServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the control API
        disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall between them

        def setup(self) -> None:
            super().setup()
            server.count_connection()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self._fault():
                return
            parts = self.path.strip("/").split("/")
            if len(parts) == 4 and parts[:2] == ["v1", "jobs"] and parts[3] == "spec":
                spec = server.spec(parts[2])
                if spec is None:
                    self._json(404, {"error": f"job {parts[2]} not found"})
                else:
                    self._json(200, spec)
                return
            self._json(404, {"error": f"not found: GET {self.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self._fault():
                return
            parts = self.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "v1" or parts[1] not in ("jobs", "async"):
                self._json(404, {"error": f"not found: POST {self.path}"})
                return
            _, family, name, route = parts
            if family == "async" and route == "ack":
                token = self.headers.get("X-Modelport-Lease-Token") or ""
                result_type = self.headers.get("Content-Type")
                status = server.ack(
                    f"async/{name}", token, {"token": token}, result=raw, result_type=result_type
                )
                self._json(status, {"ok": True} if status == 200 else {"error": "lease lost"})
                return
            body = json.loads(raw or b"{}")
            queue = name if family == "jobs" else f"async/{name}"
            if route == "lease":
                if family == "jobs":
                    status, content = server.job_lease(name, body)
                    self._json(status, content)
                else:
                    self._async_lease(name, body)
            elif route == "extend":
                status = server.extend(queue, body["token"], body)
                self._json(status, {"ok": True} if status == 200 else {"error": "lease lost"})
            elif route == "ack":
                status = server.ack(queue, body["token"], body, result=None, result_type=None)
                self._json(status, {"ok": True} if status == 200 else {"error": "lease lost"})
            elif route == "fail":
                self._json(200, {"outcome": server.fail(queue, body["token"], body["error"], body)})
            else:
                self._json(404, {"error": f"not found: POST {self.path}"})

        def _async_lease(self, api: str, body: Mapping[str, Any]) -> None:
            status, item = server.async_lease(api, body)
            if item is None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", item.content_type)
            self.send_header("X-Modelport-Request-Id", item.item_id)
            self.send_header("X-Modelport-Lease-Token", item.token or "")
            self.send_header("X-Modelport-Query", item.query)
            self.send_header("X-Modelport-Visibility", str(server.visibility_seconds))
            for name, value in item.headers.items():
                self.send_header(f"X-Modelport-Header-{name}", value)
            self.send_header("Content-Length", str(len(item.body)))
            self.end_headers()
            self.wfile.write(item.body)

        def _fault(self) -> bool:
            status = server.next_fault()
            if status is None:
                return False
            if status == 0:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self._json(status, {"error": f"injected {status}"})
            return True

        def _json(self, status: int, content: Mapping[str, Any]) -> None:
            data = json.dumps(content).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
