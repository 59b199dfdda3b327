"""The commands on a Kubernetes environment: `deploy` (build, push, render, apply), `get`, `describe`, `logs`
and `delete`, carried out through backends.kubernetes.KubernetesBackend.

Called by cli/main.py when `--env` names a Kubernetes environment (cli/envs.py). `KubeWiring` chooses the
KubeApi the backend talks through: the official client by default, another implementation for a caller
that passes one as the root command's `obj` (the tests pass an in-memory API server).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.cli import output
from modelport.cli.envs import Environment
from modelport.cli.failures import EXIT_FAILURE
from modelport.errors import UserInputError

if TYPE_CHECKING:  # the backend, the spec and pydantic load only when a Kubernetes command runs
    from modelport.backends.kube_state import PodState
    from modelport.backends.kubernetes import ApiState, KubeApi, KubernetesBackend
    from modelport.spec.load import Project

__all__ = ["KubeWiring", "connect_client", "delete", "deploy", "describe", "get", "image_reference", "logs"]

SETTLED = frozenset({"live", "error", "compute unavailable", "scaled to zero"})
SERVING = frozenset({"live", "scaled to zero"})  # what `deploy --wait` counts as a success
WAIT_POLL_SECONDS = 2.0
LOG_POLL_SECONDS = 1.0
WATCH_SECONDS = 2.0


def connect_client(environment: Environment) -> KubeApi:
    """The official Kubernetes client for the environment's kubeconfig context."""
    from modelport.backends.kubernetes import ClientKubeApi

    return ClientKubeApi.connect(context=environment.context)


@dataclass(frozen=True)
class KubeWiring:
    """How Kubernetes commands reach the API server: `connect` makes the KubeApi of an environment."""

    connect: Callable[[Environment], KubeApi] = connect_client


def backend_for(environment: Environment, wiring: KubeWiring) -> KubernetesBackend:
    from modelport.backends.kubernetes import KubernetesBackend
    from modelport.cluster.kube_cluster import kube_layout

    return KubernetesBackend(
        wiring.connect(environment),
        namespace=_namespace(environment),
        context=environment.context,
        layout=kube_layout(),
    )


def image_reference(environment: Environment, project: Project) -> str:
    """`<the environment's repository>:<12 hex chars of the project's content>`: a new tag whenever a spec
    or a project file changes, the same tag (and no rollout) when nothing did."""
    from modelport.images.containerfile import project_digest

    return f"{environment.image}:{project_digest(project)}"


# deploy ----------------------------------------------------------------------------------------------------


def deploy(
    *,
    environment: Environment,
    wiring: KubeWiring,
    path: Path,
    image: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Build and push the project's image (unless `image` names one already pushed), render the project's
    objects for the environment and apply them: the cluster's own first, then each API's."""
    from modelport.manifests import RenderOptions, render_api, render_cluster
    from modelport.spec.load import load_project
    from modelport.types import ApiKind, Revision

    project = load_project(path)  # bad specs fail here, before anything is built or contacted (exit 2)
    backend = backend_for(environment, wiring)
    backend.gateway_address()  # an unreachable cluster or refused credentials fail before a long build
    reference = image if image is not None else _build_and_push(environment, project)
    options = RenderOptions(
        namespace=_namespace(environment),
        image=reference,
        gateway_service_type=environment.gateway_service_type,
    )
    warnings = backend.apply_objects(render_cluster(options))
    results: list[dict[str, Any]] = []
    for spec in project.apis:
        if spec.kind == ApiKind.TRAFFIC_SPLITTER:
            warnings.append(
                f"{spec.name} (TrafficSplitter) is not deployed: Kubernetes environments do not run "
                "traffic splitters yet"
            )
            continue
        revision = Revision(project.revision(spec.name))
        outcome = backend.apply_api(
            spec, render_api(spec, revision=revision, options=options), revision=revision
        )
        results.append({"api": spec.name, "kind": spec.kind.value, "action": outcome.action.value})
    for warning in warnings:
        output.warning(warning)
    if not as_json:
        for result in results:
            verb = {"created": "creating", "updated": "updating"}.get(result["action"])
            output.stderr.print(
                f"{verb} {result['api']} ({result['kind']})"
                if verb
                else f"{result['api']} ({result['kind']}) is up to date"
            )
    final: list[dict[str, Any]] = []
    settled = True
    if wait:
        final, settled = _wait_until_settled(backend, [r["api"] for r in results], timeout=timeout)
    if as_json:
        document: dict[str, Any] = {"image": reference, "results": results, "warnings": warnings}
        if wait:
            document["apis"] = final
        output.print_json(document)
    if wait:
        failed = [api for api in final if api["status"] not in SERVING]
        if failed:
            if not settled:
                output.error(f"not live after {timeout:.0f} s: {', '.join(a['name'] for a in failed)}")
            for api in failed:
                output.stderr.print(f"see `modelport logs {api['name']} --env {environment.name}`")
            sys.exit(EXIT_FAILURE)
    elif results and not as_json:
        name, env = results[0]["api"], environment.name
        output.stderr.print(
            f"\nmodelport get {name} --env {env}     (show api info)\n"
            f"modelport logs {name} --env {env}    (stream api logs)"
        )


def _build_and_push(environment: Environment, project: Project) -> str:
    from modelport.images.build import build_image
    from modelport.images.engines import detect_engine

    reference = image_reference(environment, project)
    engine = detect_engine(None)
    output.stderr.print(f"building and pushing {reference} with {engine.name}")
    result = build_image(project.root, engine=engine, tag=reference, push=True, progress=_progress)
    return result.reference


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _wait_until_settled(
    backend: KubernetesBackend, names: list[str], *, timeout: float
) -> tuple[list[dict[str, Any]], bool]:
    deadline = time.monotonic() + timeout
    while True:
        states = [_summary(backend.api_status(name), endpoint=None) for name in names]
        settled = all(state["status"] in SETTLED for state in states)
        if settled or time.monotonic() > deadline:
            for state in states:
                reason = f": {state['reason']}" if state["reason"] else ""
                output.stderr.print(f"{state['name']} is {state['status']}{reason}")
            return states, settled
        time.sleep(WAIT_POLL_SECONDS)


# get / describe --------------------------------------------------------------------------------------------


def get(*, environment: Environment, wiring: KubeWiring, api: str | None, watch: bool, as_json: bool) -> None:
    """`modelport get [API] --env NAME`: every API's status and counts, or one API in detail."""
    backend = backend_for(environment, wiring)
    while True:
        gateway = backend.gateway_address()
        if api is None:
            states = backend.list_apis()
            rows = [_summary(state, endpoint=gateway) for state in states]
            if as_json:
                output.print_json(rows)
            elif not rows:
                output.stdout.print(f"no apis are deployed in {backend.where}")
            else:
                output.stdout.print(output.apis_table(rows, now=time.time()))
        else:
            detail = _detail(backend.api_status(api), environment=environment, gateway=gateway)
            if as_json:
                output.print_json(detail)
            else:
                output.show_api(detail, now=time.time())
        if not watch:
            return
        time.sleep(WATCH_SECONDS)
        output.stdout.clear()


def describe(*, environment: Environment, wiring: KubeWiring, api: str, as_json: bool) -> None:
    """`modelport describe API --env NAME`: one row per pod, then what is wrong with any of them."""
    state = backend_for(environment, wiring).api_status(api)
    replicas = [_replica(pod, current=state.revision) for pod in state.pods]
    if as_json:
        output.print_json({"replicas": replicas, "autoscaling_events": [], "batching": None})
        return
    if not replicas:
        output.stdout.print(f"{api} has no replicas (status {state.status})")
        return
    shown = [{**replica, "in_flight": "-"} for replica in replicas]  # the gateway's counts are not read here
    output.stdout.print(output.replicas_table(shown, now=time.time()))
    for pod in state.pods:
        if pod.problem is not None:
            output.stdout.print(pod.problem, style="red")


def _summary(state: ApiState, *, endpoint: str | None) -> dict[str, Any]:
    """An API in the control API's JSON shape (cluster/serialize.py); request metrics are the gateway's
    and are not read from Kubernetes, so they are null."""
    path = state.spec.networking.endpoint if state.spec is not None else f"/{state.name}"
    return {
        "name": state.name,
        "kind": state.kind.value,
        "status": state.status.value,
        "reason": state.reason,
        "revision": state.revision,
        "requested": state.requested,
        "up_to_date": state.up_to_date,
        "stale": state.stale,
        "last_updated": state.last_updated,
        "endpoint": f"http://{endpoint}{path}" if endpoint else path,
        "metrics": {
            "requests": None,
            "2XX": None,
            "4XX": None,
            "5XX": None,
            "avg_latency_seconds": None,
            "in_flight": None,
            "held": None,
        },
    }


def _detail(state: ApiState, *, environment: Environment, gateway: str | None) -> dict[str, Any]:
    detail = _summary(state, endpoint=gateway)
    detail["replicas"] = [_replica(pod, current=state.revision) for pod in state.pods]
    detail["autoscaling_events"] = []
    detail["spec"] = state.spec.to_display_dict() if state.spec is not None else {}
    request = '-X POST -H "Content-Type: application/json" -d @sample.json'
    if gateway:
        detail["example_curl"] = f"curl {detail['endpoint']} {request}"
    else:  # no load balancer address (yet, or not a LoadBalancer Service): reach the gateway through kubectl
        from modelport.manifests.layout import GATEWAY_NAME, GATEWAY_SERVICE_PORT

        forward = (
            f"kubectl --context {environment.context} -n {environment.namespace} port-forward "
            f"service/{GATEWAY_NAME} 8888:{GATEWAY_SERVICE_PORT}"
        )
        detail["example_curl"] = f"{forward} & curl http://localhost:8888{detail['endpoint']} {request}"
    return detail


def _replica(pod: PodState, *, current: str) -> dict[str, Any]:
    return {
        "replica_id": pod.name,
        "phase": pod.phase.value,
        "revision": pod.revision,
        "generation": 0,
        "up_to_date": pod.revision == current,
        "in_flight": None,
        "restarts": pod.restarts,
        "started_at": pod.started_at,
        "ready_at": pod.ready_at,
        "pid": None,
        "log_path": None,
        "reason": pod.problem or pod.waiting_reason,
    }


# logs / delete ---------------------------------------------------------------------------------------------


def logs(*, environment: Environment, wiring: KubeWiring, api: str, follow: bool) -> None:
    """`modelport logs API --env NAME`: the last lines of every replica, then new ones as they come."""
    backend = backend_for(environment, wiring)
    backend.api_status(api)  # NotFoundError for an API that is not deployed
    cursor = None
    while True:
        batch = backend.read_logs(api, cursor=cursor)
        for line in batch.lines:
            sys.stdout.write(f"[{line.replica}] {line.line}\n")
        sys.stdout.flush()
        cursor = batch.cursor
        if not follow:
            return
        time.sleep(LOG_POLL_SECONDS)


def delete(*, environment: Environment, wiring: KubeWiring, api: str) -> None:
    """`modelport delete API --env NAME`: every object of the API; Kubernetes stops its pods."""
    deleted = backend_for(environment, wiring).delete_api(api)
    output.stderr.print(f"deleted {api} ({', '.join(deleted)})")


def no_jobs(command: str, environment: Environment) -> UserInputError:
    return UserInputError(
        f"`modelport {command} API JOB_ID` works on the local environment only for now; environment "
        f"{environment.name!r} is a Kubernetes namespace (use kubectl -n {environment.namespace} get jobs)"
    )


def _namespace(environment: Environment) -> str:
    if environment.namespace is None:  # configure always sets it; a hand-made Environment may not
        raise UserInputError(f"environment {environment.name!r} has no namespace: configure it again")
    return environment.namespace
