"""The in-cluster controller process (`modelport cluster run --backend kubernetes --namespace NS`): the
reconcile loop, the prediction gateway and the control API of one namespace, in one asyncio process.

What the rendered controller Deployment runs (modelport.manifests.cluster); cli/main.py's hidden `cluster
run` calls `kube_daemon_main`. `serve` takes the KubeApi it talks through, the one seam tests fill with an
in-memory API server. Lifecycle phases:
- startup: connect with the pod's service account, open the job queue on the state volume, bind the gateway
  (all interfaces, the gateway port) and the control API (all interfaces, the control port: job and async
  worker pods call it through the controller's Service);
- main loop: controller/kube_loop.py, acting only while this pod holds the Lease; the readiness probe
  (`/v1/ready`) passes only then, so the gateway and control Services send a standby nothing;
- shutdown on SIGTERM (after the pod's preStop sleep has taken it out of the endpoints): stop accepting,
  let in-flight predictions finish (up to `gateway_drain_seconds`), stop the loop, release the Lease (the
  next controller starts at once instead of waiting for it to expire), close the queue.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from modelport.backends.kube_lease import KubeLeaseStore
from modelport.backends.kubernetes import ClientKubeApi, KubeApi, KubernetesBackend
from modelport.clock import Clock, SystemClock
from modelport.cluster.jobs_api import JobsApi
from modelport.cluster.kube_cluster import KubeCluster, kube_layout
from modelport.cluster.kube_control import KubeControlApi
from modelport.controller.jobs import JobScheduler
from modelport.controller.kube_loop import KubeController
from modelport.controller.leader import LeaderElector, LeaseTimings
from modelport.errors import UserInputError
from modelport.gateway.app import Gateway
from modelport.http.server import HttpServer
from modelport.manifests.layout import (
    CONTROL_PORT,
    CONTROLLER_NAME,
    GATEWAY_NAME,
    GATEWAY_PORT,
    GATEWAY_SERVICE_PORT,
    LEASE_NAME,
)
from modelport.manifests.options import dns_label_problem
from modelport.settings import Settings
from modelport.store.jobs import SqliteJobStore

__all__ = ["KubeDaemonConfig", "kube_daemon_main", "serve"]

log = logging.getLogger("modelport.daemon")

ALL_INTERFACES = "0.0.0.0"  # in a pod every port must be reachable from its Services
STATE_FILE = "state.db"  # the job queue, under MODELPORT_HOME (the controller's volume)


@dataclass(frozen=True, kw_only=True)
class KubeDaemonConfig:
    namespace: str
    identity: str  # this controller's name in the Lease: the pod's name
    state_dir: Path  # the job queue's SQLite file lives here (the controller's PersistentVolumeClaim)
    host: str = ALL_INTERFACES
    gateway_port: int = GATEWAY_PORT
    control_port: int = CONTROL_PORT
    tick_seconds: float = 1.0  # how often the namespace is read (each pass lists its APIs and pods)
    autoscale_interval_seconds: float = 10.0
    job_visibility_seconds: float = 30.0
    gateway_drain_seconds: float = 30.0  # within the pod's termination grace period
    lease: LeaseTimings = field(default_factory=LeaseTimings)

    def __post_init__(self) -> None:
        problem = dns_label_problem(self.namespace)
        if problem is not None:
            raise UserInputError(f"--namespace: {problem}")
        if not self.identity:
            raise UserInputError("--identity: the controller needs a name in the Lease (the pod's name)")

    @classmethod
    def from_settings(cls, settings: Settings, *, namespace: str, identity: str) -> KubeDaemonConfig:
        """MODELPORT_HOME, the ports and the intervals from the environment the rendered pod sets."""
        return cls(
            namespace=namespace,
            identity=identity,
            state_dir=settings.home,
            gateway_port=settings.gateway_port,
            control_port=settings.control_port,
            autoscale_interval_seconds=settings.autoscale_interval_seconds,
            job_visibility_seconds=settings.job_visibility_seconds,
        )

    @property
    def gateway_url(self) -> str:
        """The gateway as pods of the cluster reach it (its Service)."""
        port = "" if GATEWAY_SERVICE_PORT == 80 else f":{GATEWAY_SERVICE_PORT}"
        return f"http://{GATEWAY_NAME}.{self.namespace}.svc{port}"

    @property
    def control_url(self) -> str:
        """The control API as job and async workers reach it (the controller's Service)."""
        return f"http://{CONTROLLER_NAME}.{self.namespace}.svc:{CONTROL_PORT}"


async def serve(
    config: KubeDaemonConfig,
    *,
    api: KubeApi,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    handle_signals: bool = True,
) -> int:
    """Run the namespace's controller, gateway and control API until `stop` is set (or SIGTERM/SIGINT when
    `handle_signals`); returns the exit code."""
    stop = stop or asyncio.Event()
    clock = clock or SystemClock()
    backend = KubernetesBackend(
        api, namespace=config.namespace, context=None, layout=kube_layout(), clock=clock
    )
    elector = LeaderElector(
        KubeLeaseStore(backend, name=LEASE_NAME, namespace=config.namespace),
        identity=config.identity,
        clock=clock,
        timings=config.lease,
    )
    job_store = SqliteJobStore(config.state_dir / STATE_FILE)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    try:
        gateway = Gateway(clock=clock)
        scheduler = JobScheduler(
            store=job_store, clock=clock, visibility_seconds=config.job_visibility_seconds
        )
        controller = KubeController(
            cluster=KubeCluster(backend, namespace=config.namespace),
            leader=elector,
            routes=gateway,
            traffic=gateway,
            clock=clock,
            tick_seconds=config.tick_seconds,
            autoscale_interval_seconds=config.autoscale_interval_seconds,
            jobs=scheduler,
        )
        jobs_api = JobsApi(controller=controller, scheduler=scheduler, gateway_url=config.gateway_url)
        gateway.serve_submissions(jobs_api)
        control = KubeControlApi(
            controller=controller,
            traffic=gateway,
            namespace=config.namespace,
            gateway_url=config.gateway_url,
            control_url=config.control_url,
            jobs=jobs_api,
        )
        control_server = HttpServer(control.handle)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        gateway_address = await gateway.start(host=config.host, port=config.gateway_port)
        try:
            control_address = await control_server.start(host=config.host, port=config.control_port)
        except BaseException:
            gateway.stop_accepting()
            await gateway.drain(0)
            gateway.close()
            raise
        log.info(
            "modelport controller %s of namespace %s: gateway on %s, control API on %s; leading once it "
            "holds Lease %s",
            config.identity,
            config.namespace,
            gateway_address,
            control_address,
            LEASE_NAME,
        )

        reconcile = asyncio.create_task(controller.run(stop), name="controller")
        await stop.wait()

        log.info("modelport controller %s stopping", config.identity)
        gateway.stop_accepting()
        await asyncio.gather(gateway.drain(config.gateway_drain_seconds), reconcile)
        await controller.shutdown()
        control_server.stop_accepting()
        await control_server.drain(2.0)
        gateway.close()
        log.info("modelport controller %s stopped", config.identity)
        return 0
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        job_store.close()


def kube_daemon_main(config: KubeDaemonConfig) -> int:
    """The process: the pod's in-cluster credentials, logs on stderr (kubectl logs), uvloop."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        api = ClientKubeApi.connect(context=None)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return uvloop.run(serve(config, api=api))
    except OSError as exc:
        print(
            f"error: the modelport controller could not start: {exc}. Is another program using port "
            f"{config.gateway_port} or {config.control_port}? Set MODELPORT_GATEWAY_PORT and "
            "MODELPORT_CONTROL_PORT (and the pod's ports) to others.",
            file=sys.stderr,
        )
        return 1
