"""requirements.txt against the running environment: what deploy warns about, and what it leaves to pip."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from modelport.cluster.requirements import requirements_warning, unmet_requirements


def write(root: Path, text: str) -> Path:
    (root / "requirements.txt").write_text(text)
    return root


def test_no_requirements_file_means_nothing_to_say(tmp_path: Path) -> None:
    assert unmet_requirements(tmp_path) == []
    assert requirements_warning(tmp_path) is None


def test_installed_and_satisfied_requirements_pass(tmp_path: Path) -> None:
    pytest_version = importlib.metadata.version("pytest")
    write(tmp_path, f"# tools\npytest>=1.0\nPyYAML  # any version\npytest=={pytest_version}\n")
    assert unmet_requirements(tmp_path) == []


def test_missing_and_too_old_packages_are_named_with_their_line(tmp_path: Path) -> None:
    installed = importlib.metadata.version("pytest")
    write(tmp_path, "numpy\nno-such-package-for-modelport-tests==1.0\npytest>=999\n")
    assert unmet_requirements(tmp_path) == [
        "requirements.txt:2: no-such-package-for-modelport-tests is not installed",
        f"requirements.txt:3: pytest {installed} is installed, the project needs >=999",
    ]
    warning = requirements_warning(tmp_path)
    assert warning is not None
    assert "-m pip install -r" in warning
    assert str(tmp_path / "requirements.txt") in warning


def test_pip_options_urls_and_foreign_markers_are_left_to_pip(tmp_path: Path) -> None:
    write(
        tmp_path,
        "--index-url https://example.invalid/simple\n-r other.txt\n"
        "./local/package\nno-such-package-for-modelport-tests; sys_platform == 'nonexistent'\n",
    )
    assert unmet_requirements(tmp_path) == []
