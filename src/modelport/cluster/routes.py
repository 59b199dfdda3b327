"""The JSON route tables of the control APIs (local and in-cluster): a route is (method, path pattern,
handler); `dispatch` finds the handler, decodes the path parameters and maps errors to statuses.

Used by cluster/control_api.py, cluster/kube_control.py and the job routes of cluster/jobs_api.py.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import unquote

from modelport.cluster.http_errors import error_to_response
from modelport.http.server import Request, Response, error_response

RouteHandler = Callable[[Request, dict[str, str]], Awaitable[Response]]
Route = tuple[str, re.Pattern[str], RouteHandler]


async def dispatch(routes: Sequence[Route], request: Request) -> Response:
    """The first route whose pattern matches the whole path and whose method is the request's (HEAD
    answers as GET); 405 when only the method differs, 404 when no pattern matches."""
    path_matched = False
    for method, pattern, handler in routes:
        match = pattern.fullmatch(request.path)
        if match is None:
            continue
        path_matched = True
        if method != request.method and not (method == "GET" and request.method == "HEAD"):
            continue
        try:
            params = {key: unquote(value) for key, value in match.groupdict().items()}
            return await handler(request, params)
        except Exception as exc:
            return error_to_response(exc, request)
    if path_matched:
        return error_response(405, f"method {request.method} is not allowed on {request.path}")
    return error_response(404, f"no control API route {request.path}")
