"""`modelport.Client`: the Python client of a modelport cluster, over its control API (JSON over HTTP).

The CLI is built on it, so everything the CLI does a program can do too:

    from modelport import Client
    client = Client()                      # settings from MODELPORT_HOME / ..._CONTROL_PORT, or pass them
    client.deploy("examples/iris-classifier")
    client.predict("iris-classifier", {"sepal_length": 5.2, ...})
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.errors import (
    ClusterNotRunningError,
    ConflictError,
    ModelportError,
    NotFoundError,
    UnavailableError,
    UserInputError,
)
from modelport.settings import Settings
from modelport.spec.load import SpecError, SpecProblem


class PredictionError(ModelportError):
    """The API answered a prediction request with an error status."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"the API answered {status}: {body.decode('utf-8', 'replace')[:2000]}")


class Client:
    def __init__(self, settings: Settings | None = None, *, timeout: float = 60.0) -> None:
        self.settings = settings or Settings.from_env()
        self.timeout = timeout
        self.last_warnings: list[str] = []  # from the last deploy

    # cluster
    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/health", timeout=2.0)
        return result

    def is_running(self) -> bool:
        try:
            self.health()
        except ModelportError:
            return False
        return True

    def shutdown(self) -> None:
        self._call("POST", "/v1/cluster/shutdown")

    # APIs
    def deploy(self, path: str | Path = ".") -> list[dict[str, str]]:
        """Create or update every API of the project at `path`; one {api, kind, action} per API.

        Warnings about the project (e.g. unmet requirements.txt) are in `last_warnings` afterwards.
        """
        absolute = str(Path(path).expanduser().absolute())
        answer = self._call("POST", "/v1/deploy", {"path": absolute})
        self.last_warnings = list(answer.get("warnings", []))
        results: list[dict[str, str]] = answer["results"]
        return results

    def list_apis(self) -> list[dict[str, Any]]:
        apis: list[dict[str, Any]] = self._call("GET", "/v1/apis")["apis"]
        return apis

    def get_api(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/apis/{_quote(name)}")
        return result

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/v1/apis/{_quote(name)}")

    def refresh(self, name: str) -> None:
        self._call("POST", f"/v1/apis/{_quote(name)}/refresh")

    def read_logs(
        self, name: str, cursor: dict[str, int] | None = None, *, job_id: str | None = None
    ) -> tuple[list[dict[str, str]], dict[str, int]]:
        """New log lines of every replica of `name` (or of one job's workers) since `cursor` (None: the
        recent part of each log)."""
        path = f"/v1/apis/{_quote(name)}" + (f"/jobs/{_quote(job_id)}" if job_id else "") + "/logs"
        result = self._call("POST", path, {"cursor": cursor or {}})
        return result["lines"], result["cursor"]

    # Jobs (BatchAPI, TaskAPI)
    def list_jobs(self, name: str) -> list[dict[str, Any]]:
        """The API's jobs, newest first, each in Cortex's job_status shape."""
        jobs: list[dict[str, Any]] = self._call("GET", f"/v1/apis/{_quote(name)}/jobs")["jobs"]
        return jobs

    def get_job(self, name: str, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", f"/v1/apis/{_quote(name)}/jobs/{_quote(job_id)}")
        return job

    def stop_job(self, name: str, job_id: str) -> None:
        self._call("DELETE", f"/v1/apis/{_quote(name)}/jobs/{_quote(job_id)}")

    def submit(self, name: str, submission: Any = None, *, body: bytes | None = None, query: str = "") -> Any:
        """POST a job (BatchAPI), a task (TaskAPI) or a request (AsyncAPI) to the API's endpoint; returns
        the job's status, or {"id"} of an async request."""
        return self.predict(name, submission, body=body, query=query)

    def get_result(self, name: str, request_id: str) -> dict[str, Any]:
        """An async request's {id, status, result, timestamp}."""
        endpoint = self.get_api(name)["endpoint"]
        request = urllib.request.Request(f"{endpoint}/{_quote(request_id)}", method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            raise _error_from(exc.code, exc.read()) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise UnavailableError(f"the gateway at {endpoint} did not answer: {exc}") from None

    def predict(
        self,
        name: str,
        payload: Any = None,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        query: str | Mapping[str, str] = "",
    ) -> Any:
        """POST to the API through the gateway. JSON answers are decoded; others returned as bytes/str."""
        endpoint = self.get_api(name)["endpoint"]
        data = body if body is not None else json.dumps(payload).encode()
        query_string = query if isinstance(query, str) else urllib.parse.urlencode(query)
        url = endpoint + (f"?{query_string}" if query_string else "")
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                kind = response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            raise PredictionError(exc.code, exc.read()) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise UnavailableError(f"the gateway at {endpoint} did not answer: {exc}") from None
        if kind.startswith("application/json"):
            return json.loads(raw)
        if kind.startswith("text/"):
            return raw.decode()
        return raw

    # transport
    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        url = self.settings.control_url + path
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise _error_from(exc.code, exc.read()) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise ClusterNotRunningError(
                f"no modelport cluster answers at {self.settings.control_url} ({_reason(exc)}); start one "
                "with `modelport cluster up`, or check MODELPORT_HOME / MODELPORT_CONTROL_PORT"
            ) from None


def _quote(name: str) -> str:
    # An API name is one path segment: "a/b", "a?b" or "a#b" must not reach another route or API.
    return urllib.parse.quote(name, safe="")


def _reason(exc: BaseException) -> str:
    return str(exc.reason) if isinstance(exc, urllib.error.URLError) else str(exc)


def _error_from(status: int, raw: bytes) -> ModelportError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": raw.decode("utf-8", "replace")}
    message = str(body.get("error", body))
    if status == 400 and "problems" in body:
        return SpecError(
            tuple(SpecProblem(file=p["file"], path=p["path"], message=p["message"]) for p in body["problems"])
        )
    if status == 400:
        return UserInputError(message)
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status == 503:
        return UnavailableError(message)
    return ModelportError(f"the modelport cluster answered {status}: {message}")
