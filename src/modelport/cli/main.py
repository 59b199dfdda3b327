"""The `modelport` command: parses flags, wires settings to the client and the daemon, prints results.

The only place that parses command-line flags. Exit codes: 0 success, 1 failure, 2 bad input (an invalid
spec, a bad flag), 130 interrupted. `--env NAME` picks where deploy/get/describe/logs/delete act: `local`
(the embedded cluster, the default) here, a Kubernetes environment (cli/envs.py) through cli/kube.py.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from modelport.cli import kube, output
from modelport.cli.envs import LOCAL, Environment, find_environment
from modelport.cli.failures import EXIT_BAD_INPUT, EXIT_FAILURE, fail_cleanly
from modelport.cli.kube import KubeWiring
from modelport.client import Client, PredictionError
from modelport.errors import ClusterNotRunningError, ModelportError, UserInputError
from modelport.settings import Settings
from modelport.version import __version__

R = TypeVar("R")


OUTPUT_OPTION = click.option(
    "-o",
    "--output",
    type=click.Choice(["pretty", "json"]),
    default=None,
    help="pretty tables for people (default), json for programs",
)


ENV_OPTION = click.option(
    "-e",
    "--env",
    "env_name",
    default=None,
    metavar="NAME",
    help="environment to act on: local (default) or one from `modelport env list`",
)


@dataclasses.dataclass
class Context:
    settings: Settings
    env: str
    environment: Environment
    kube: KubeWiring

    def environment_for(self, name: str | None) -> Environment:
        """The command's own --env when given, else the root command's."""
        if name is None or name == self.env:
            return self.environment
        return find_environment(self.settings, name)

    def client(self) -> Client:
        """A client of the running cluster of this home (ClusterNotRunningError when none answers)."""
        self._local_only()
        client = Client(self.settings)
        _check_home(self.settings, client.health())
        return client

    def running_client(self) -> Client:
        """A client of a running cluster, starting the cluster first when none answers."""
        self._local_only()
        client = Client(self.settings)
        try:
            _check_home(self.settings, client.health())
        except ClusterNotRunningError:
            _start_cluster(self.settings, quiet=False)
        return client

    def _local_only(self) -> None:
        if self.environment.is_kubernetes:
            command = " ".join(["modelport", *click.get_current_context().command_path.split()[1:]])
            raise UserInputError(
                f"`{command}` works on the local environment only for now; {self.env!r} is a Kubernetes "
                "environment (deploy, get, describe, logs and delete work there)"
            )


def _check_home(settings: Settings, health: dict[str, Any]) -> None:
    """Refuse to act on another home's cluster that happens to listen on our control port."""
    home = health.get("home")
    if home is not None and Path(home) != settings.home:
        raise ModelportError(
            f"the cluster answering on {settings.control_url} belongs to {home}, not to {settings.home}: "
            "choose this home's control port with --control-port or MODELPORT_CONTROL_PORT"
        )


pass_context = click.make_pass_decorator(Context)


def _cluster_options(func: Callable[..., R]) -> Callable[..., R]:
    """--home/--gateway-port/--control-port: on the root command and again on `cluster up`."""
    options = [
        click.option(
            "--home",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="state folder of the local cluster [env MODELPORT_HOME; default ~/.modelport]",
        ),
        click.option(
            "--gateway-port",
            type=click.IntRange(1, 65535),
            default=None,
            help="port of the prediction gateway [env MODELPORT_GATEWAY_PORT; default 8888]",
        ),
        click.option(
            "--control-port",
            type=click.IntRange(1, 65535),
            default=None,
            help="port of the control API [env MODELPORT_CONTROL_PORT; default 8889]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _with_overrides(
    settings: Settings, *, home: Path | None, gateway_port: int | None, control_port: int | None
) -> Settings:
    overrides: dict[str, Any] = {}
    if home is not None:
        overrides["home"] = home.expanduser().absolute()
    if gateway_port is not None:
        overrides["gateway_port"] = gateway_port
    if control_port is not None:
        overrides["control_port"] = control_port
    updated = dataclasses.replace(settings, **overrides)
    if updated.gateway_port == updated.control_port:
        raise UserInputError(
            f"the gateway and the control API cannot share port {updated.gateway_port}: "
            "choose different --gateway-port and --control-port"
        )
    return updated


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="modelport")
@click.option(
    "-e",
    "--env",
    default=LOCAL,
    show_default=True,
    help="environment to act on: local (the embedded cluster) or one from `modelport env list`",
)
@_cluster_options
@OUTPUT_OPTION
@click.pass_context
def cli(
    ctx: click.Context,
    /,
    env: str,
    home: Path | None,
    gateway_port: int | None,
    control_port: int | None,
    **_: Any,
) -> None:
    """Deploy Python predictors as autoscaled, monitored web APIs."""
    # A program embedding the CLI may pass `obj=KubeWiring(...)` to choose how Kubernetes is reached.
    wiring = ctx.obj if isinstance(ctx.obj, KubeWiring) else KubeWiring()
    try:
        settings = Settings.from_env()
        settings = _with_overrides(settings, home=home, gateway_port=gateway_port, control_port=control_port)
        environment = find_environment(settings, env)
    except UserInputError as exc:
        for line in str(exc).splitlines():
            output.error(line)
        sys.exit(EXIT_BAD_INPUT)
    ctx.obj = Context(settings=settings, env=env, environment=environment, kube=wiring)


# cluster -------------------------------------------------------------------------------------------------


@cli.group()
def cluster() -> None:
    """Start, stop and inspect the local cluster."""


def _start_cluster(settings: Settings, *, quiet: bool) -> None:
    from modelport.cluster.daemon import spawn_daemon

    client = Client(settings)
    if not quiet:
        output.stderr.print(f"starting the local cluster (home {settings.home}) ...")
    spawn_daemon(settings, is_ready=client.is_running)
    if not quiet:
        output.stderr.print(
            f"the local cluster is up: gateway {settings.gateway_url}, control API {settings.control_url}"
        )


@cluster.command("up")
@_cluster_options
@pass_context
@fail_cleanly
def cluster_up(ctx: Context, home: Path | None, gateway_port: int | None, control_port: int | None) -> None:
    """Start the local cluster in the background (deploy does this when needed)."""
    ctx.settings = _with_overrides(
        ctx.settings, home=home, gateway_port=gateway_port, control_port=control_port
    )
    try:
        health = Client(ctx.settings).health()
    except ClusterNotRunningError:
        _start_cluster(ctx.settings, quiet=False)
        return
    _check_home(ctx.settings, health)
    output.stderr.print(f"the local cluster is already running (gateway {health['gateway_url']})")


@cluster.command("down")
@pass_context
@fail_cleanly
def cluster_down(ctx: Context) -> None:
    """Stop the local cluster and every replica it started."""
    from modelport.cluster.daemon import (
        force_stop,
        read_daemon_info,
        reap_after_crash,
        wait_for_exit,
    )

    info = read_daemon_info(ctx.settings)
    try:
        ctx.client().shutdown()
    except ClusterNotRunningError:
        if info is None or wait_for_exit(info.pid, timeout=0):
            # No daemon: make sure a crashed one left nothing running.
            leftovers = reap_after_crash(ctx.settings)
            if leftovers:
                output.stderr.print(
                    f"the local cluster was not running; stopped {len(leftovers)} replica(s) "
                    "a crashed cluster left behind"
                )
            else:
                output.stderr.print("the local cluster is not running")
            return
        raise
    output.stderr.print("stopping the local cluster (draining in-flight requests) ...")
    if info is not None and not wait_for_exit(info.pid, timeout=90):
        output.error(f"the cluster (pid {info.pid}) did not stop within 90 s; killing it")
        force_stop(info.pid)
    output.stderr.print("the local cluster is stopped")


@cluster.command("info")
@OUTPUT_OPTION
@pass_context
@fail_cleanly
def cluster_info(ctx: Context, **_: Any) -> None:
    """Where the local cluster listens and what it holds."""
    info = ctx.client().health()
    if _wants_json():
        output.print_json(info)
        return
    for key in ("status", "version", "pid", "home", "gateway_url", "control_url", "apis"):
        output.stdout.print(f"{key.replace('_', ' ')}: {info[key]}")


@cluster.command("run", hidden=True)
@click.option(
    "--backend",
    type=click.Choice(["local", "kubernetes"]),
    default="local",
    show_default=True,
    help="local: the embedded cluster (what `cluster up` starts); kubernetes: the controller and gateway of "
    "a namespace, run by the controller pod `modelport render kubernetes` renders",
)
@click.option("--namespace", default=None, help="kubernetes: the namespace this controller manages")
@click.option(
    "--identity",
    default=None,
    help="kubernetes: this controller's name in the leader Lease [default: the host name, the pod's name]",
)
@pass_context
@fail_cleanly
def cluster_run(ctx: Context, backend: str, namespace: str | None, identity: str | None) -> None:
    """Run the cluster in the foreground (what `cluster up` starts in the background, or a namespace's
    controller in its pod)."""
    if backend == "kubernetes":
        import socket

        from modelport.cluster.kube_daemon import KubeDaemonConfig, kube_daemon_main

        if not namespace:
            raise UserInputError("--namespace: required with --backend kubernetes (the namespace to manage)")
        config = KubeDaemonConfig.from_settings(
            ctx.settings, namespace=namespace, identity=identity or socket.gethostname()
        )
        sys.exit(kube_daemon_main(config))
    if namespace is not None or identity is not None:
        raise UserInputError("--namespace and --identity go with --backend kubernetes only")
    from modelport.cluster.daemon import daemon_main

    sys.exit(daemon_main(ctx.settings))


# APIs ----------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="wait until every deployed API is live (or fails)")
@click.option("--timeout", default=300.0, show_default=True, help="seconds --wait waits at most")
@click.option(
    "--image",
    metavar="REF",
    default=None,
    help="Kubernetes environments: run this pushed image of the project instead of building and pushing one",
)
@ENV_OPTION
@OUTPUT_OPTION
@pass_context
@fail_cleanly
def deploy(
    ctx: Context, path: Path, wait: bool, timeout: float, image: str | None, env_name: str | None, **_: Any
) -> None:
    """Create or update the APIs of the project at PATH (a folder with modelport.yaml, or the file).

    On a Kubernetes environment: build the project's image, push it, and apply the project's objects.
    """
    from modelport.spec.load import load_project

    environment = ctx.environment_for(env_name)
    if environment.is_kubernetes:
        kube.deploy(
            environment=environment,
            wiring=ctx.kube,
            path=path,
            image=image,
            wait=wait,
            timeout=timeout,
            as_json=_wants_json(),
        )
        return
    if image is not None:
        raise UserInputError(
            "--image: only Kubernetes environments run images; the local environment runs the project folder"
        )

    load_project(path)  # bad specs fail here, before any cluster is touched (exit 2)
    client = ctx.running_client()
    results = client.deploy(path)
    for warning in client.last_warnings:
        output.warning(warning)
    if _wants_json() and not wait:
        output.print_json({"results": results, "warnings": client.last_warnings})
        return
    for result in results:
        verb = {"created": "creating", "updated": "updating"}.get(result["action"])
        line = (
            f"{verb} {result['api']} ({result['kind']})"
            if verb
            else f"{result['api']} ({result['kind']}) is up to date"
        )
        output.stderr.print(line)
    if wait:
        final, settled = _wait_until_settled(client, [r["api"] for r in results], timeout=timeout)
        if _wants_json():
            output.print_json({"results": results, "warnings": client.last_warnings, "apis": final})
        failed = [api for api in final if api["status"] != "live"]
        if failed:
            if not settled:
                output.error(f"not live after {timeout:.0f} s: {', '.join(a['name'] for a in failed)}")
            for api in failed:
                output.stderr.print(f"see `modelport logs {api['name']}`")
            sys.exit(EXIT_FAILURE)
        return
    if results:
        name = results[0]["api"]
        output.stderr.print(
            f"\nmodelport get {name}     (show api info)\nmodelport logs {name}    (stream api logs)"
        )


def _wait_until_settled(
    client: Client, names: list[str], *, timeout: float
) -> tuple[list[dict[str, Any]], bool]:
    """Poll until no API is still updating (or the timeout); print each API's final state once.

    Returns the APIs' last views and whether they all settled in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        apis = [client.get_api(name) for name in names]
        settled = all(a["status"] in ("live", "error", "compute unavailable") for a in apis)
        if settled or time.monotonic() > deadline:
            for api in apis:
                message = f"{api['name']} is {api['status']}"
                if api.get("reason"):
                    message += f": {api['reason']}"
                output.stderr.print(message)
            return apis, settled
        time.sleep(0.2)


@cli.command()
@click.argument("api", required=False)
@click.argument("job_id", required=False)
@OUTPUT_OPTION
@click.option("-w", "--watch", is_flag=True, help="re-print every 2 s until interrupted (or the job ends)")
@ENV_OPTION
@pass_context
@fail_cleanly
def get(
    ctx: Context, api: str | None, job_id: str | None, watch: bool, env_name: str | None, **_: Any
) -> None:
    """Show every API (status, replicas, traffic), one API in detail (a batch or task API: its jobs), or
    one job of it."""
    environment = ctx.environment_for(env_name)
    if environment.is_kubernetes:
        if job_id is not None:
            raise kube.no_jobs("get", environment)
        kube.get(environment=environment, wiring=ctx.kube, api=api, watch=watch, as_json=_wants_json())
        return
    client = ctx.client()
    while True:
        if api is not None and job_id is not None:
            job = client.get_job(api, job_id)
            if _wants_json():
                output.print_json(job)
            else:
                output.show_job(job, now=time.time())
            if job["status"] not in ("running", "enqueuing"):
                return
        elif api is None:
            apis = client.list_apis()
            if _wants_json():
                output.print_json(apis)
            elif not apis:
                output.stdout.print("no apis are deployed")
            else:
                output.stdout.print(output.apis_table(apis, now=time.time()))
        else:
            detail = client.get_api(api)
            jobs = client.list_jobs(api) if detail["kind"] in ("BatchAPI", "TaskAPI") else None
            if _wants_json():
                output.print_json(detail if jobs is None else {**detail, "jobs": jobs})
            elif jobs is None:
                output.show_api(detail, now=time.time())
            else:
                output.show_api(detail, now=time.time())
                output.stdout.print("\njobs", style="bold")
                output.stdout.print(output.jobs_table(jobs, now=time.time()) if jobs else "no jobs yet")
        if not watch:
            return
        time.sleep(2)
        output.stdout.clear()


@cli.command()
@click.argument("api")
@OUTPUT_OPTION
@ENV_OPTION
@pass_context
@fail_cleanly
def describe(ctx: Context, api: str, env_name: str | None, **_: Any) -> None:
    """One row per replica of API (state, revision, in-flight requests, restarts, age), then the recent
    autoscaling events."""
    environment = ctx.environment_for(env_name)
    if environment.is_kubernetes:
        kube.describe(environment=environment, wiring=ctx.kube, api=api, as_json=_wants_json())
        return
    detail = ctx.client().get_api(api)
    if _wants_json():
        output.print_json(
            {
                "replicas": detail["replicas"],
                "autoscaling_events": detail["autoscaling_events"],
                "batching": detail.get("batching"),
            }
        )
        return
    now = time.time()
    if detail["replicas"]:
        output.stdout.print(output.replicas_table(detail["replicas"], now=now))
    else:
        output.stdout.print(f"{api} has no replicas (status {detail['status']})")
    if detail.get("batching"):
        output.stdout.print("\nserver-side batching (all ready replicas)", style="bold")
        output.stdout.print(output.batching_table(detail["batching"]))
    if detail["autoscaling_events"]:
        output.stdout.print("\nrecent autoscaling events", style="bold")
        output.stdout.print(output.events_table(detail["autoscaling_events"], now=now))


@cli.command()
@click.argument("api")
@click.argument("file", required=False, type=click.Path(allow_dash=True, path_type=Path))
@click.option("--query", default="", help="query string to send, e.g. 'sleep=0.5'")
@pass_context
@fail_cleanly
def predict(ctx: Context, api: str, file: Path | None, query: str) -> None:
    """POST the JSON in FILE (or stdin with '-', default ./sample.json) to API and print the answer."""
    if file is None:
        file = Path("sample.json")
        if not file.is_file():
            raise UserInputError("predict: give a JSON file (or '-' for stdin); no ./sample.json here")
    if str(file) == "-":
        body = sys.stdin.buffer.read()
    else:
        try:
            body = file.read_bytes()
        except OSError as exc:
            raise UserInputError(f"predict: cannot read {file}: {exc.strerror}") from None
    result = ctx.client().predict(api, body=body, query=query)
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
    elif isinstance(result, str):
        sys.stdout.write(result + ("" if result.endswith("\n") else "\n"))
    else:
        output.print_json(result)


@cli.command()
@click.argument("api")
@click.argument("job_id", required=False)
@click.option("--follow/--no-follow", default=True, show_default=True, help="keep printing new lines")
@ENV_OPTION
@pass_context
@fail_cleanly
def logs(ctx: Context, api: str, job_id: str | None, follow: bool, env_name: str | None) -> None:
    """Print the logs of every replica of API (or of every worker of one job), prefixed with the replica,
    and follow them (a job's until it ends)."""
    environment = ctx.environment_for(env_name)
    if environment.is_kubernetes:
        if job_id is not None:
            raise kube.no_jobs("logs", environment)
        kube.logs(environment=environment, wiring=ctx.kube, api=api, follow=follow)
        return
    client = ctx.client()
    cursor: dict[str, int] | None = None
    while True:
        ended = job_id is not None and client.get_job(api, job_id)["status"] not in ("running", "enqueuing")
        lines, cursor = client.read_logs(api, cursor, job_id=job_id)
        for entry in lines:
            sys.stdout.write(f"[{entry['replica']}] {entry['line']}\n")
        sys.stdout.flush()
        if not follow or ended:
            return
        time.sleep(0.25)


@cli.command()
@click.argument("api")
@pass_context
@fail_cleanly
def refresh(ctx: Context, api: str) -> None:
    """Restart every replica of API with no downtime (a rolling restart)."""
    ctx.client().refresh(api)
    output.stderr.print(f"updating {api}")


@cli.command()
@click.argument("api")
@click.argument("job_id", required=False)
@ENV_OPTION
@pass_context
@fail_cleanly
def delete(ctx: Context, api: str, job_id: str | None, env_name: str | None) -> None:
    """Delete API and stop its replicas, or stop one job of it."""
    environment = ctx.environment_for(env_name)
    if environment.is_kubernetes:
        if job_id is not None:
            raise kube.no_jobs("delete", environment)
        kube.delete(environment=environment, wiring=ctx.kube, api=api)
        return
    if job_id is not None:
        ctx.client().stop_job(api, job_id)
        output.stderr.print(f"stopped job {job_id} of {api}")
        return
    ctx.client().delete(api)
    output.stderr.print(f"deleted {api}")


@cli.command()
@click.argument("api")
@click.argument("file", type=click.Path(allow_dash=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="batch jobs: list what would be enqueued, enqueue nothing")
@click.option(
    "--wait", is_flag=True, help="follow the job's progress until it ends (exit 1 unless succeeded)"
)
@OUTPUT_OPTION
@pass_context
@fail_cleanly
def submit(ctx: Context, api: str, file: Path, dry_run: bool, wait: bool, **_: Any) -> None:
    """Submit the job (BatchAPI), task (TaskAPI) or request (AsyncAPI) in FILE ('-': stdin) to API."""
    if str(file) == "-":
        body = sys.stdin.buffer.read()
    else:
        try:
            body = file.read_bytes()
        except OSError as exc:
            raise UserInputError(f"submit: cannot read {file}: {exc.strerror}") from None
    client = ctx.client()
    try:
        answer = client.submit(api, body=body, query="dryRun=true" if dry_run else "")
    except PredictionError as exc:
        raise UserInputError(f"submit: {exc}") from None
    if _wants_json() and not wait:
        output.print_json(answer)
        return
    if not isinstance(answer, dict) or "job_id" not in answer:
        output.print_json(answer)
        return
    output.stderr.print(f"submitted job {answer['job_id']} ({answer['total_batch_count']} batches)")
    if not wait:
        sys.stdout.write(answer["job_id"] + "\n")
        return
    job = _follow_job(client, api, answer["job_id"])
    if _wants_json():
        output.print_json(job)
    else:
        output.show_job(job, now=time.time())
    if job["status"] != "succeeded":
        sys.exit(EXIT_FAILURE)


def _follow_job(client: Client, api: str, job_id: str) -> dict[str, Any]:
    """Poll the job until it ends, with one progress line on stderr; returns its final status."""
    while True:
        job = client.get_job(api, job_id)
        line = f"{job['status']:<10} {output.job_progress(job)}"
        if sys.stderr.isatty():
            output.stderr.print(line, end="\r", markup=False)
        if job["status"] not in ("running", "enqueuing"):
            if sys.stderr.isatty():
                output.stderr.print()
            return job
        time.sleep(0.5)


@cli.command("replica", hidden=True, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def replica(args: tuple[str, ...]) -> None:
    """Run one replica of an API (started by the cluster, not by users)."""
    from modelport.runtime.server import main as replica_main

    sys.exit(replica_main(list(args)))


@cli.command("worker", hidden=True, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args: tuple[str, ...]) -> None:
    """Run a worker of a batch job or a task (started by the cluster, not by users)."""
    from modelport.runtime.worker import main as worker_main

    sys.exit(worker_main(list(args)))


def _wants_json() -> bool:
    ctx = click.get_current_context()
    chosen = ctx.params.get("output") or ctx.find_root().params.get("output")
    return bool(chosen == "json")


def _register_commands() -> None:
    """Commands that live in their own modules (they import cli.main's helpers, so they join here)."""
    from modelport.cli.build import build
    from modelport.cli.envs import env
    from modelport.cli.render import render

    cli.add_command(render)
    cli.add_command(build)
    cli.add_command(env)


_register_commands()


def main() -> None:
    cli(prog_name="modelport")
