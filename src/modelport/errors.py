"""The error taxonomy. Each error says whether retrying can help; HTTP statuses are mapped only at the edge.

Leaf module: imports nothing of modelport's.
"""

from __future__ import annotations


class ModelportError(Exception):
    """Base of every error modelport raises on purpose. `str(err)` is the message a user reads."""

    retryable: bool = False


class UserInputError(ModelportError):
    """The user gave something wrong (a spec, a request body, a flag); the message names the fix."""


class NotFoundError(ModelportError):
    """A named thing (API, replica, job) does not exist."""


class ConflictError(ModelportError):
    """The request contradicts current state (e.g. an update is already in progress)."""


class UnavailableError(ModelportError):
    """Temporarily cannot serve (no ready replica, cluster starting); retrying later may help."""

    retryable = True

    def __init__(self, message: str, *, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ClusterNotRunningError(UnavailableError):
    """The local cluster daemon does not answer on its control port."""
