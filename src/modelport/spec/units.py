"""Durations ("1h30m", "250ms") and Kubernetes quantities ("200m", "1Gi"): parsing and display.

Pure functions called by `spec.model` to validate user values and by `ApiSpec.to_display_dict` to show them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_DURATION_UNITS: dict[str, Decimal] = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
# Go's time.ParseDuration grammar (what Cortex used): a sign, then one or more <number><unit> terms.
# Long durations (kept results, retention) may also start with whole days: "7d", "1d12h".
_DURATION_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_DAYS = re.compile(r"(\d+)d(.*)")
_DAY = 86400
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")

_BINARY_SUFFIXES: dict[str, int] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_DECIMAL_SUFFIXES: dict[str, Decimal] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
# Kubernetes' resource.Quantity grammar: <number><suffix>, suffix binary (Ki..Ei), decimal (n..E) or e<exp>.
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[numkMGTPE])|[eE](?P<exp>[+-]?\d+))?"
)

DURATION_HINT = "a duration like 30s, 5m, 1h30m or 250ms (or a number of seconds)"
LONG_DURATION_HINT = "a duration like 7d, 12h or 1d12h (or a number of seconds)"
CPU_HINT = "a CPU amount like 1, 0.5 or 200m"
MEMORY_HINT = "a memory amount like 512Mi, 1Gi or 500M (or a number of bytes)"


def parse_duration(value: object, *, days: bool = False) -> float:
    """Seconds from a number of seconds or a Go-style duration string; ValueError names the expected form.

    `days=True` also accepts a leading whole number of days ("7d", "1d12h"), which Go's grammar lacks.
    """
    hint = LONG_DURATION_HINT if days else DURATION_HINT
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {hint}, got {value!r}")
    if isinstance(value, int | float):
        return _finite(float(value), hint)
    text = value.strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    whole_days = 0
    days_match = _DAYS.fullmatch(text) if days else None
    if days_match:
        whole_days, text = int(days_match[1]), days_match[2]
        if not text:
            return float(whole_days * _DAY)
    if not _DURATION.fullmatch(text) or (days_match and text.startswith(("+", "-"))):
        raise ValueError(f"expected {hint}, got {value!r}")
    total = sum(
        (Decimal(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_TERM.findall(text)),
        Decimal(0),
    )
    return float(whole_days * _DAY + (-total if text.startswith("-") else total))


def format_duration(seconds: float, *, days: bool = False) -> str:
    """The shortest exact rendering: 60 -> "1m", 90 -> "1m30s", 0.25 -> "250ms", 5400 -> "1h30m".

    `days=True` writes whole days first (604800 -> "7d", 129600 -> "1d12h"), for `parse_duration(days=True)`.
    """
    if seconds == 0:
        return "0s"
    if days and seconds >= _DAY:
        whole_days, rest = divmod(seconds, _DAY)
        return f"{int(whole_days)}d" + (format_duration(rest) if rest else "")
    sign = "-" if seconds < 0 else ""
    magnitude = abs(seconds)
    millis = round(magnitude * 1000)
    if not math.isclose(magnitude * 1000, millis, abs_tol=1e-6):
        return f"{sign}{magnitude:g}s"  # finer than a millisecond: plain seconds stay exact
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole_seconds, millis = divmod(rest, 1000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if millis and not (hours or minutes or whole_seconds):
        parts.append(f"{millis}ms")
    elif whole_seconds or millis:
        parts.append(f"{whole_seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s")
    return sign + "".join(parts)


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity ("200m", "1.5", "1Gi", "1e3") as an exact Decimal; ValueError if malformed."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number = Decimal(match["number"])
    if match["binary"]:
        return number * _BINARY_SUFFIXES[match["binary"]]
    if match["exp"] is not None:
        try:
            return number.scaleb(int(match["exp"]))
        except InvalidOperation as exc:  # an absurd exponent
            raise ValueError(f"not a quantity: {text!r}") from exc
    return number * _DECIMAL_SUFFIXES[match["decimal"] or ""]


def parse_cpu(value: object) -> float:
    """Cores from 1, 0.5, "1.5" or "200m"."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {CPU_HINT}, got {value!r}")
    if isinstance(value, int | float):
        return _finite(float(value), CPU_HINT)
    try:
        return float(parse_quantity(value))
    except ValueError:
        raise ValueError(f"expected {CPU_HINT}, got {value!r}") from None


def parse_memory(value: object) -> int:
    """Bytes from 1073741824, "1Gi", "500M" or "200Mi"; fractional bytes round up as in Kubernetes."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {MEMORY_HINT}, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected {MEMORY_HINT}, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    try:
        return math.ceil(parse_quantity(value))
    except ValueError:
        raise ValueError(f"expected {MEMORY_HINT}, got {value!r}") from None


def format_cpu(cores: float) -> str:
    """1.0 -> "1", 0.2 -> "200m", 1.5 -> "1500m"."""
    if float(cores).is_integer():
        return str(int(cores))
    return f"{round(cores * 1000, 6):g}m"


def format_memory(num_bytes: int) -> str:
    """The largest exact unit: 1073741824 -> "1Gi", 500000000 -> "500M", 1000 -> "1k", 1023 -> "1023"."""
    if num_bytes == 0:
        return "0"
    for suffix, size in reversed(_BINARY_SUFFIXES.items()):
        if num_bytes % size == 0:
            return f"{num_bytes // size}{suffix}"
    for suffix in ("E", "P", "T", "G", "M", "k"):
        size = int(_DECIMAL_SUFFIXES[suffix])
        if num_bytes % size == 0:
            return f"{num_bytes // size}{suffix}"
    return str(num_bytes)


def _finite(number: float, hint: str) -> float:
    if not math.isfinite(number):
        raise ValueError(f"expected {hint}, got {number!r}")
    return number
