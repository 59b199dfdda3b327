"""Where modelport's pieces live in a namespace: object names, ports, paths, labels and what each pod runs.

Shared by the renderers of this package (cluster.py, apis.py); these names are also the contract with the
controller's Kubernetes backend, which finds the objects by them.
"""

from __future__ import annotations

from enum import StrEnum

# The cluster's own objects. The controller's pod also serves the prediction gateway (one process: the
# autoscaler reads the gateway's in-flight counts in memory), so the gateway is a Service, not a Deployment.
CONTROLLER_NAME = "modelport-controller"  # Deployment, Service, ServiceAccount, Role, RoleBinding
LEASE_NAME = "modelport-controller"  # coordination.k8s.io Lease for leader election
STATE_CLAIM_NAME = "modelport-controller-state"  # PersistentVolumeClaim holding the SQLite state
GATEWAY_NAME = "modelport-gateway"  # the Service in front of the controller pod's gateway port

CONTROL_PORT = 8889
GATEWAY_PORT = 8888
GATEWAY_SERVICE_PORT = 80
REPLICA_PORT = 8080
CONTROL_HEALTH_PATH = "/v1/health"  # 200 while the controller process runs (liveness)
CONTROL_READY_PATH = "/v1/ready"  # 200 only while it leads: the gateway and control Services select it then
READY_PATH = "/readyz"
ALIVE_PATH = "/healthz"

STATE_DIR = "/var/lib/modelport"  # MODELPORT_HOME of the controller
SPEC_DIR = "/etc/modelport"  # where an API's ConfigMap is mounted
SPEC_KEY = "spec.json"
SPEC_PATH = f"{SPEC_DIR}/{SPEC_KEY}"
PROJECT_DIR = "/app"  # where the project image holds the user's files

RUN_AS_USER = 1000
REPLICA_GRACE_SECONDS = 25  # what `modelport replica --grace` gives in-flight requests on SIGTERM
PRESTOP_SLEEP_SECONDS = 5  # endpoints drop a terminating pod within this, before it stops accepting
GRACE_MARGIN_SECONDS = 5

# Label keys (app.kubernetes.io: the recommended labels) and annotation keys.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
VERSION_LABEL = "app.kubernetes.io/version"
API_LABEL = "modelport.dev/api"
KIND_LABEL = "modelport.dev/kind"
JOB_ID_LABEL = "modelport.dev/job-id"
REVISION_ANNOTATION = "modelport.dev/revision"
IMAGE_ANNOTATION = "modelport.dev/image"  # on a spec ConfigMap: the project image its revision runs

GPU_RESOURCE = "nvidia.com/gpu"
INF_RESOURCE = "aws.amazon.com/neuron"


class Component(StrEnum):
    """app.kubernetes.io/component of each kind of pod modelport runs (and of the objects around it)."""

    CONTROLLER = "controller"
    GATEWAY = "gateway"
    API = "api"  # replicas of a RealtimeAPI or AsyncAPI, and their Service, PDB and spec
    WORKER = "worker"  # pods of a BatchAPI's or TaskAPI's job


def api_object_name(api: str) -> str:
    """The Deployment, Service and PodDisruptionBudget of an API (Cortex's `api-<name>`)."""
    return f"api-{api}"


def spec_config_map_name(api: str, revision: str) -> str:
    """One immutable ConfigMap per revision, so a rolling update's old pods keep reading their own spec."""
    return f"api-{api}-spec-{revision[:12]}"


def job_name(api: str, job_id: str) -> str:
    return f"{api}-{job_id}"
