"""modelport: deploy Python predictors as autoscaled, monitored web APIs.

The public surface is the command line (`modelport`) and `modelport.Client`; everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelport.version import __version__

__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from modelport.client import Client


def __getattr__(name: str) -> Any:
    # Lazy so that `import modelport` (done by every replica) does not pull in the client's imports.
    if name == "Client":
        from modelport.client import Client

        return Client
    raise AttributeError(f"module 'modelport' has no attribute {name!r}")
