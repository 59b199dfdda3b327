"""Deployment manifests: the Kubernetes objects that run modelport's controller, gateway and APIs.

Pure rendering (plain dicts, YAML, files), used by `modelport render kubernetes` and the Kubernetes backend.
"""

from __future__ import annotations

from modelport.manifests.kubernetes import (
    RenderOptions,
    render_api,
    render_cluster,
    render_job,
    render_project,
    to_yaml,
    write_manifests,
)

__all__ = [
    "RenderOptions",
    "render_api",
    "render_cluster",
    "render_job",
    "render_project",
    "to_yaml",
    "write_manifests",
]
