"""The objects a namespace needs before any API: namespace, controller (RBAC, state, lease) and gateway.

Called by manifests.kubernetes.render_project (and by `modelport render kubernetes` through it).

Topology: one controller pod runs `modelport cluster run --backend kubernetes` (cluster/kube_daemon.py): the
reconcile loop, the control API (port 8889) and the prediction gateway (port 8888) in one process, because the
autoscaler decides on the gateway's in-flight counts, which it then reads in memory. The gateway Service
(LoadBalancer by default) and the control Service both select that pod, and its readiness probe passes only
while it holds the Lease: a second controller (say, one still running on a node cut off from the API server
while its replacement starts) stands by and receives nothing.
"""

from __future__ import annotations

from modelport.manifests.layout import (
    COMPONENT_LABEL,
    CONTROL_HEALTH_PATH,
    CONTROL_PORT,
    CONTROL_READY_PATH,
    CONTROLLER_NAME,
    GATEWAY_NAME,
    GATEWAY_PORT,
    GATEWAY_SERVICE_PORT,
    INSTANCE_LABEL,
    LEASE_NAME,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
    PRESTOP_SLEEP_SECONDS,
    STATE_CLAIM_NAME,
    STATE_DIR,
    VERSION_LABEL,
    Component,
)
from modelport.manifests.options import RenderOptions, label_value_problem
from modelport.manifests.pods import (
    Object,
    container_security_context,
    field_env,
    http_probe,
    metadata,
    pod_security_context,
    sleep_hook,
)
from modelport.version import __version__

MANAGED_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
READ_VERBS = ("get", "list", "watch")

# What the controller may do in its namespace, and nothing more: it manages each API's Deployment, Service,
# spec ConfigMap and PodDisruptionBudget and each job's Job, scales through deployments/scale, watches pods
# and EndpointSlices to see replicas, reads pod logs for `modelport logs`, and renews its pre-created Lease.
# No Secrets, no pods/exec, no RBAC, no wildcards.
CONTROLLER_RULES: tuple[Object, ...] = (
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": list(MANAGED_VERBS)},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": list(MANAGED_VERBS)},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": list(MANAGED_VERBS)},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": list(MANAGED_VERBS)},
    {"apiGroups": [""], "resources": ["pods"], "verbs": list(READ_VERBS)},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": list(READ_VERBS)},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [LEASE_NAME],
        "verbs": ["get", "update"],
    },
)

# The preStop sleep, then the gateway's drain of in-flight predictions (which may be slow, up to 30 s), then
# the Lease's release.
CONTROLLER_GRACE_SECONDS = 60


def render_cluster(options: RenderOptions) -> list[Object]:
    """Namespace, controller RBAC, Lease, state PVC, the controller's Deployment, its control Service and
    the gateway Service in front of it.

    The Namespace enforces Pod Security's `restricted` profile, which every pod rendered here meets; rendering
    into a namespace shared with other workloads applies that label to it too.
    """
    namespace = options.namespace
    controller = _labels(Component.CONTROLLER)
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            # Every pod modelport renders passes Pod Security's `restricted` profile: enforce it.
            "metadata": metadata(
                namespace,
                namespace=None,
                labels={**_labels(None), "pod-security.kubernetes.io/enforce": "restricted"},
            ),
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(CONTROLLER_NAME, namespace=namespace, labels=controller),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(CONTROLLER_NAME, namespace=namespace, labels=controller),
            "rules": [dict(rule) for rule in CONTROLLER_RULES],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(CONTROLLER_NAME, namespace=namespace, labels=controller),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER_NAME},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            # Created here so that the controller needs only get/update on this one Lease; it owns the spec.
            "metadata": metadata(LEASE_NAME, namespace=namespace, labels=controller),
            "spec": {},
        },
        _state_claim(options),
        _controller_deployment(options),
        _service(
            CONTROLLER_NAME,
            namespace=namespace,
            component=Component.CONTROLLER,
            service_type="ClusterIP",
            port=CONTROL_PORT,
            target="control",
        ),
        _service(
            GATEWAY_NAME,
            namespace=namespace,
            component=Component.GATEWAY,
            service_type=options.gateway_service_type,
            port=GATEWAY_SERVICE_PORT,
            target="http",
            selects=Component.CONTROLLER,  # the controller's pod serves the gateway
        ),
    ]


def _labels(component: Component | None) -> dict[str, str]:
    labels = {NAME_LABEL: "modelport", INSTANCE_LABEL: "modelport"}
    if component is not None:
        labels[COMPONENT_LABEL] = component.value
    labels |= {PART_OF_LABEL: "modelport", MANAGED_BY_LABEL: "modelport"}
    if label_value_problem(__version__) is None:  # a local build's version may hold a '+'
        labels[VERSION_LABEL] = __version__
    return labels


def _selector(component: Component) -> dict[str, str]:
    return {NAME_LABEL: "modelport", COMPONENT_LABEL: component.value}


def _state_claim(options: RenderOptions) -> Object:
    spec: Object = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": options.storage_size}},
    }
    if options.storage_class is not None:
        spec["storageClassName"] = options.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(
            STATE_CLAIM_NAME, namespace=options.namespace, labels=_labels(Component.CONTROLLER)
        ),
        "spec": spec,
    }


def _controller_deployment(options: RenderOptions) -> Object:
    container: Object = {
        "name": "controller",
        "image": options.system_image,
        "command": [
            "modelport",
            "cluster",
            "run",
            "--backend",
            "kubernetes",
            "--namespace",
            options.namespace,
            "--identity",
            "$(POD_NAME)",  # its identity in the Lease (Kubernetes expands the variable)
        ],
        "ports": [
            {"name": "control", "containerPort": CONTROL_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "MODELPORT_HOME", "value": STATE_DIR},
            {"name": "MODELPORT_CONTROL_PORT", "value": str(CONTROL_PORT)},
            {"name": "MODELPORT_GATEWAY_PORT", "value": str(GATEWAY_PORT)},
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ],
        # The gateway proxies every prediction: it needs more than the control loop alone.
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        # Ready only while it leads; alive while the process answers (a standby is alive, not ready).
        "readinessProbe": http_probe(CONTROL_READY_PATH, "control", period=2, failures=2),
        "livenessProbe": http_probe(CONTROL_HEALTH_PATH, "control", period=10, failures=6, timeout=5),
        # Endpoints drop the pod while it still serves, then SIGTERM drains the gateway.
        "lifecycle": sleep_hook(PRESTOP_SLEEP_SECONDS),
        "securityContext": container_security_context(read_only_root=True),
        "volumeMounts": [
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            CONTROLLER_NAME, namespace=options.namespace, labels=_labels(Component.CONTROLLER)
        ),
        "spec": {
            "replicas": 1,
            # Recreate: the old controller lets go of the volume (ReadWriteOnce) and the Lease before the new
            # one starts, so two controllers never write one SQLite file.
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": _selector(Component.CONTROLLER)},
            "template": {
                "metadata": {"labels": _labels(Component.CONTROLLER)},
                "spec": {
                    "serviceAccountName": CONTROLLER_NAME,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": {**pod_security_context(), "fsGroupChangePolicy": "OnRootMismatch"},
                    "terminationGracePeriodSeconds": CONTROLLER_GRACE_SECONDS,
                    "containers": [container],
                    "volumes": [
                        {"name": "state", "persistentVolumeClaim": {"claimName": STATE_CLAIM_NAME}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _service(
    name: str,
    *,
    namespace: str,
    component: Component,
    service_type: str,
    port: int,
    target: str,
    selects: Component | None = None,
) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace=namespace, labels=_labels(component)),
        "spec": {
            "type": service_type,
            "selector": _selector(selects or component),
            "ports": [{"name": target, "port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }
