"""The Kubernetes backend as the in-cluster controller's `ServingCluster` (controller/kube_ports.py): the
namespace's APIs as deployed, their ready endpoints, the scale subresource, and each job as a Kubernetes Job
rendered by modelport.manifests.

Built by cluster/kube_daemon.py; the one place that joins backends.kubernetes and modelport.manifests for
the controller (they sit side by side in the import layers). `kube_layout()` is the names and labels the
renderer gives objects, which the backend finds them by.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modelport.backends.kube_state import KubeLayout
from modelport.backends.kubernetes import ApiState, KubernetesBackend
from modelport.controller.jobstore import JobRecord
from modelport.controller.kube_ports import DeployedApi, JobWorkers
from modelport.controller.ports import DesiredApi
from modelport.errors import UnavailableError
from modelport.manifests import layout
from modelport.manifests.kubernetes import RenderOptions, render_job
from modelport.types import ApiKind, ApiName, JobId, ReplicaTarget

__all__ = ["KubeCluster", "kube_layout"]

SERVED_KINDS = frozenset({ApiKind.REALTIME, ApiKind.ASYNC})


def kube_layout() -> KubeLayout:
    """The names and labels modelport.manifests gives an API's objects, for the backend to find them by."""
    return KubeLayout(
        api_label=layout.API_LABEL,
        component_label=layout.COMPONENT_LABEL,
        kind_label=layout.KIND_LABEL,
        api_component=layout.Component.API.value,
        revision_annotation=layout.REVISION_ANNOTATION,
        spec_key=layout.SPEC_KEY,
        replica_port=layout.REPLICA_PORT,
        object_name=layout.api_object_name,
        gateway_service=layout.GATEWAY_NAME,
        worker_component=layout.Component.WORKER.value,
        job_id_label=layout.JOB_ID_LABEL,
        image_annotation=layout.IMAGE_ANNOTATION,
    )


class KubeCluster:
    """One namespace through a KubernetesBackend. Every call goes to the API server: the controller makes
    them from a worker thread."""

    def __init__(self, backend: KubernetesBackend, *, namespace: str) -> None:
        self._backend = backend
        self._namespace = namespace

    def deployed_apis(self) -> list[DeployedApi]:
        return [_deployed(state) for state in self._backend.list_apis()]

    def ready_endpoints(self, api: ApiName) -> Sequence[ReplicaTarget]:
        return self._backend.ready_endpoints(api)

    def scale(self, api: ApiName, replicas: int) -> None:
        self._backend.scale(api, replicas)

    def job_workers(self) -> JobWorkers:
        jobs = frozenset(self._backend.active_job_ids())
        return JobWorkers(pods=tuple(self._backend.job_workers()), jobs=jobs)

    def start_job(self, desired: DesiredApi, job: JobRecord, *, workers: int) -> None:
        """The job's workers run the revision the API runs now, from the image it was deployed with. A
        finished Kubernetes Job of the job (its only worker was evicted and exited 0, or its pods failed past
        backoffLimit while batches were still left) is deleted first: a Job starts no pods once finished."""
        image = self._backend.spec_image(desired.name, desired.revision)
        if image is None:
            raise UnavailableError(
                f"api {desired.name} (revision {desired.revision[:12]}) has no project image recorded on its "
                f"spec ConfigMap ({layout.IMAGE_ANNOTATION}): deploy it again with this modelport version"
            )
        options = RenderOptions(namespace=self._namespace, image=image)
        manifest = render_job(
            desired.spec,
            job_id=job.job_id,
            workers=workers,
            revision=desired.revision,
            options=options,
            timeout_seconds=job.timeout_seconds,
        )
        self._backend.delete_job(job.job_id)
        self._backend.apply_job(manifest)

    def stop_job(self, job_id: JobId) -> bool:
        return self._backend.delete_job(job_id)


def _deployed(state: ApiState) -> DeployedApi:
    spec = state.spec
    desired = (
        None
        if spec is None
        else DesiredApi(
            spec=spec,
            revision=state.revision,
            # Where the replica and worker pods hold the project and the spec (the image and the ConfigMap).
            project_dir=Path(layout.PROJECT_DIR),
            spec_path=Path(layout.SPEC_PATH),
            deployed_at=state.last_updated or 0.0,
        )
    )
    requested: int | None = state.requested
    if state.kind in SERVED_KINDS and not state.has_deployment:
        requested = None
    return DeployedApi(
        name=state.name,
        kind=state.kind,
        desired=desired,
        status=state.status,
        reason=state.reason,
        requested=requested,
    )
