"""Unit tests of runtime.options: the replica's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.runtime.options import ReplicaOptions, parse_args


def test_flags_become_options_with_absolute_paths() -> None:
    options = parse_args(
        [
            "--project-dir",
            "proj",
            "--spec",
            "s.json",
            "--port",
            "8123",
            "--replica-id",
            "iris-1",
            "--grace",
            "2.5",
        ]
    )
    assert options == ReplicaOptions(
        project_dir=Path("proj").absolute(),
        spec_path=Path("s.json").absolute(),
        host="127.0.0.1",
        port=8123,
        replica_id="iris-1",
        grace_seconds=2.5,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--spec", "s.json", "--port", "1", "--replica-id", "r"],  # no project dir
        ["--project-dir", "p", "--spec", "s.json", "--port", "70000", "--replica-id", "r"],
        ["--project-dir", "p", "--spec", "s.json", "--port", "1", "--replica-id", "r", "--grace", "-1"],
    ],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2
    assert "modelport replica" in capsys.readouterr().err
