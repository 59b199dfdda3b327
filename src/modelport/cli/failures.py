"""Exit codes and the decorator that turns modelport errors into one line on stderr, for every command.

Shared by cli/main.py and the commands in their own modules (cli/render.py, cli/build.py).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from modelport.cli import output
from modelport.client import PredictionError
from modelport.errors import ModelportError, UserInputError

R = TypeVar("R")

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail_cleanly(func: Callable[..., R]) -> Callable[..., R]:
    """Turn modelport errors into a one-line message on stderr and a meaningful exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return func(*args, **kwargs)
        except UserInputError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                output.error(line)
            sys.exit(EXIT_BAD_INPUT)
        except (PredictionError, ModelportError) as exc:
            output.error(str(exc))
            sys.exit(EXIT_FAILURE)
        except OSError as exc:  # e.g. a home folder that cannot be created
            where = f" ({exc.filename})" if exc.filename else ""
            output.error(f"{exc.strerror or exc}{where}")
            sys.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)

    return wrapper
