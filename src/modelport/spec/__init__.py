"""What the user writes: the validated API spec (`model`), its loading from a project (`load`), its errors.

Pure apart from reading project files; imported by runtime, gateway, controller, backends, store and cli.
"""

from __future__ import annotations

from modelport.spec.errors import SpecError, SpecProblem
from modelport.spec.load import Project, load_project, project_files
from modelport.spec.model import (
    ApiSpec,
    AsyncSpec,
    AutoscalingSpec,
    ComputeSpec,
    MonitoringSpec,
    NetworkingSpec,
    PredictorSpec,
    UpdateStrategySpec,
)

__all__ = [
    "ApiSpec",
    "AsyncSpec",
    "AutoscalingSpec",
    "ComputeSpec",
    "MonitoringSpec",
    "NetworkingSpec",
    "PredictorSpec",
    "Project",
    "SpecError",
    "SpecProblem",
    "UpdateStrategySpec",
    "load_project",
    "project_files",
]
