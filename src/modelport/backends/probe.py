"""The smallest HTTP client: "what does GET <path> answer?" (for /readyz, /healthz and a replica's /metrics).

Used by backends/local.py on every poll tick; one short-lived connection per probe, no client library, so
that probing dozens of replicas costs next to nothing and cannot leak pooled connections.
"""

from __future__ import annotations

import asyncio
import contextlib

from modelport.types import Address

# Probe bodies are a few bytes; anything beyond this is not a replica talking.
_MAX_RESPONSE_BYTES = 64 * 1024


async def probe_status(address: Address, path: str, *, wait_seconds: float) -> int | None:
    """The HTTP status of `GET path`, or None when nothing answered correctly within `wait_seconds`."""
    reply = await fetch(address, path, wait_seconds=wait_seconds)
    return None if reply is None else reply[0]


async def fetch(address: Address, path: str, *, wait_seconds: float) -> tuple[int, bytes] | None:
    """`GET path`: the status and the body (headers dropped), or None when nothing answered correctly
    within `wait_seconds`. For small answers (probes, a replica's /metrics): at most 64 KiB are read."""
    try:
        async with asyncio.timeout(wait_seconds):
            return await _get(address, path)
    except (TimeoutError, OSError, ValueError):
        return None


async def _get(address: Address, path: str) -> tuple[int, bytes] | None:
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode("ascii"))
        await writer.drain()
        # Read to EOF (the server closes: Connection: close) so that our close is not a reset that the
        # replica's server would log as an error.
        received = b""
        while len(received) < _MAX_RESPONSE_BYTES and (chunk := await reader.read(_MAX_RESPONSE_BYTES)):
            received += chunk
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line, _, rest = received.partition(b"\r\n")
    status = _parse_status(status_line)
    if status is None:
        return None
    _, _, body = rest.partition(b"\r\n\r\n")
    return status, body


def _parse_status(status_line: bytes) -> int | None:
    # b"HTTP/1.1 200 OK" -> 200
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])
