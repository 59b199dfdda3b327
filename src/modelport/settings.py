"""Every setting modelport reads from its environment, typed and validated once (`Settings.from_env`).

Nothing else in modelport reads `os.environ` for its own configuration. CLI flags override these values by
constructing `Settings` with `dataclasses.replace`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import UserInputError

DEFAULT_GATEWAY_PORT = 8888
DEFAULT_CONTROL_PORT = 8889


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    gateway_port: int = DEFAULT_GATEWAY_PORT
    control_port: int = DEFAULT_CONTROL_PORT
    # The gateway binds here; the control API always binds loopback only.
    gateway_host: str = "127.0.0.1"
    # How often the autoscaler decides (Cortex: 10 s). Lower it only to watch scaling in tests or demos.
    autoscale_interval_seconds: float = 10.0
    # A job or async lease's life between a worker's heartbeats; a worker that dies without the daemon
    # noticing (a daemon restart) has its items retried after this long.
    job_visibility_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("MODELPORT_HOME") or Path.home() / ".modelport").expanduser()
        return cls(
            home=home.absolute(),
            gateway_port=_port(env, "MODELPORT_GATEWAY_PORT", DEFAULT_GATEWAY_PORT),
            control_port=_port(env, "MODELPORT_CONTROL_PORT", DEFAULT_CONTROL_PORT),
            gateway_host=env.get("MODELPORT_GATEWAY_HOST") or "127.0.0.1",
            autoscale_interval_seconds=_seconds(env, "MODELPORT_AUTOSCALE_INTERVAL", 10.0),
            job_visibility_seconds=_seconds(env, "MODELPORT_JOB_VISIBILITY", 30.0),
        )

    # Where things live under home. One place, so that the daemon, the CLI and tests agree.
    @property
    def database_path(self) -> Path:
        return self.home / "state.db"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def specs_dir(self) -> Path:
        return self.home / "specs"

    @property
    def daemon_pid_path(self) -> Path:
        return self.home / "daemon.pid"

    @property
    def daemon_log_path(self) -> Path:
        return self.home / "daemon.log"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def gateway_url(self) -> str:
        host = "localhost" if self.gateway_host in ("127.0.0.1", "0.0.0.0") else self.gateway_host
        return f"http://{host}:{self.gateway_port}"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise UserInputError(f"{name}: expected a port number (1-65535), got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise UserInputError(f"{name}: expected a port number (1-65535), got {port}")
    return port


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise UserInputError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not 0 < seconds <= 3600:
        raise UserInputError(f"{name}: expected seconds in (0, 3600], got {raw}")
    return seconds
