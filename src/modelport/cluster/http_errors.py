"""The one map from modelport's errors to HTTP statuses, for the control API and the gateway's job routes.

Called by cluster/control_api.py and cluster/jobs_api.py around every handler.
"""

from __future__ import annotations

import logging

from modelport.errors import ConflictError, ModelportError, NotFoundError, UnavailableError, UserInputError
from modelport.http.server import Request, Response, error_response, json_response
from modelport.spec.job import JobRequestError
from modelport.spec.load import SpecError

log = logging.getLogger("modelport.control")


def error_to_response(exc: Exception, request: Request) -> Response:
    """A JSON error response for `exc`: 400 bad input, 404, 409, 503, 500 (logged) for anything else."""
    if isinstance(exc, SpecError):
        problems = [{"file": p.file, "path": p.path, "message": p.message} for p in exc.problems]
        return json_response(400, {"error": str(exc), "problems": problems})
    if isinstance(exc, JobRequestError):
        return json_response(400, {"error": str(exc), "problems": list(exc.problems)})
    if isinstance(exc, UserInputError):
        return error_response(400, str(exc))
    if isinstance(exc, NotFoundError):
        return error_response(404, str(exc))
    if isinstance(exc, ConflictError):
        return error_response(409, str(exc))
    if isinstance(exc, UnavailableError):
        return error_response(503, str(exc))
    if isinstance(exc, ModelportError):
        return error_response(500, str(exc))
    log.exception("%s %s failed", request.method, request.path, exc_info=exc)
    return error_response(500, "internal error in the modelport daemon: see its log")
