"""The ``treadle`` command."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from pydantic import SecretStr, ValidationError
from rich.console import Console

from config.settings import Settings, get_settings
from config.topology import PRIORITY_ORDER, PriorityClass, TopologyError, load_topology
from orchestrator import render
from orchestrator.errors import InvalidInput, TreadleError, WorkflowFailed

if TYPE_CHECKING:
    from orchestrator.client import BaseClient

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
if not out.is_terminal:
    # Piped or logged output (CI, `make demo | tee`) has no width; tables need room.
    out.width = 120

PRIORITIES = click.Choice([p.value for p in PRIORITY_ORDER])


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:
        if not isinstance(exc, ValidationError):
            raise InvalidInput(str(exc)) from exc
        problems = [
            f"TREADLE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            # A check across settings names the settings itself.
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise InvalidInput("\n".join(problems) or str(exc)) from exc


@contextmanager
def _client() -> Iterator[BaseClient]:
    """Over the HTTP API when TREADLE_API_URL is set, else on Redis directly."""
    from orchestrator.client import Client

    with Client.from_settings(_settings()) as client:
        yield client


def _fail(exc: TreadleError) -> NoReturn:
    err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(exc.exit_code)


class _TreadleGroup(click.Group):
    """Maps every TreadleError to its exit code and a one-paragraph message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TreadleError as exc:
            _fail(exc)
        except TopologyError as exc:
            _fail(InvalidInput(str(exc)))


@click.group(cls=_TreadleGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """treadle: workflows of sequential, parallel and hybrid stages on Celery and Redis."""


# -- specs ------------------------------------------------------------------------------


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: Sequence[Path]) -> None:
    """Check specs; nothing is enqueued."""
    from orchestrator.service import SpecChecker
    from orchestrator.validate import load_spec_file

    checker = SpecChecker(_settings())
    problems: list[str] = []
    for path in files:
        try:
            workflow = checker.check(load_spec_file(path), str(path))
        except InvalidInput as exc:
            problems.append(exc.render())
            continue
        out.print(f"[green]ok[/green] {path}: {workflow.name} ({len(workflow.steps)} steps)")
    if problems:
        raise InvalidInput("\n".join(problems))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--durations",
    type=click.Path(path_type=Path),
    help="YAML/JSON mapping of step id to expected seconds (default: 1 s a step).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(file: Path, durations: Path | None, as_json: bool) -> None:
    """Compiled structure, critical path, width, and estimated makespans."""
    from orchestrator.planning import check_durations, make_plan
    from orchestrator.service import SpecChecker
    from orchestrator.validate import load_spec_file

    checker = SpecChecker(_settings())
    workflow = checker.check(load_spec_file(file), str(file))
    expected = (
        check_durations(load_spec_file(durations), workflow, str(durations))
        if durations is not None
        else None
    )
    the_plan = make_plan(workflow, checker.topology, expected)
    if as_json:
        click.echo(json.dumps(the_plan.to_json(), indent=2))
    else:
        render.plan(out, the_plan)


@main.command()
def schema() -> None:
    """Print the JSON Schema of workflow specs."""
    from orchestrator.model import WorkflowSpec

    click.echo(json.dumps(WorkflowSpec.model_json_schema(), indent=2))


# -- running workflows -----------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--param", "params", multiple=True, help="KEY=VALUE (VALUE parsed as JSON if it is).")
@click.option("--priority", type=PRIORITIES, help="Override the spec's priority class.")
@click.option("--wait", is_flag=True, help="Wait for the end, with live progress.")
@click.option("--json", "as_json", is_flag=True, help='Print {"id": ...} (and the state).')
@click.option(
    "--retry-refused",
    "retry_refused_s",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="If refused by backpressure, try again (with backoff) for up to this long.",
)
def submit(
    file: Path,
    params: Sequence[str],
    priority: str | None,
    wait: bool,
    as_json: bool,
    retry_refused_s: float,
) -> None:
    """Validate, store and enqueue a workflow (exit 3 if refused by backpressure)."""
    from orchestrator.service import parse_param

    overrides = dict(parse_param(p) for p in params)
    with _client() as client:
        done = client.submit_detailed(
            file, params=overrides, priority=priority, retry_refused_s=retry_refused_s
        )
        if not wait:
            if as_json:
                click.echo(json.dumps({"id": done.id}))
            else:
                note = "" if done.created else " (idempotency key seen before: first id)"
                out.print(f"submitted {done.id}{note}")
            return
        if as_json:
            status = client.wait(done.id)
        else:
            out.print(f"submitted {done.id}")
            status = render.follow(out, [done.id], client.status)[0]
        if as_json:
            click.echo(json.dumps({"id": done.id, "state": status["state"]}))
        else:
            render.status_table(out, status)
        if status["state"] != "succeeded":
            raise WorkflowFailed(f"workflow {done.id} ended {status['state']}")


@main.command()
@click.argument("workflow_id")
@click.option("--watch", is_flag=True, help="Refresh until the workflow ends.")
@click.option("--json", "as_json", is_flag=True)
def status(workflow_id: str, watch: bool, as_json: bool) -> None:
    """Per-step state, attempts and times."""
    with _client() as client:
        if watch and not as_json:
            render.watch(out, workflow_id, client.status)
            return
        if watch:
            client.wait(workflow_id)
        current = client.status(workflow_id)
        if as_json:
            click.echo(json.dumps(current))
        else:
            render.status_table(out, current)


@main.command(name="list")
@click.option("--state", help="Only workflows in this state.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_(state: str | None, limit: int, as_json: bool) -> None:
    """Workflows, newest first."""
    with _client() as client:
        rows = client.list(state, limit)
    if as_json:
        click.echo(json.dumps(rows))
    else:
        render.list_table(out, rows)


@main.command(name="audit")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True)
def audit_(workflow_id: str, as_json: bool) -> None:
    """Check the audit chain and the order of execution against the graph; exit 1 if not."""
    with _client() as client:
        report = client.audit(workflow_id)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        render.audit_report(out, report)
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("workflow_id")
@click.option("--terminate", is_flag=True, help="Also stop the steps that are running.")
def cancel(workflow_id: str, terminate: bool) -> None:
    """Stop a workflow: steps not started never start; running steps finish (or stop)."""
    with _client() as client:
        state = client.cancel(workflow_id, terminate)
    out.print(f"{workflow_id}: {state}")


@main.command()
@click.argument("workflow_id")
def resume(workflow_id: str) -> None:
    """Re-run failed, skipped and cancelled steps and their dependents; keep the rest."""
    with _client() as client:
        steps = client.resume(workflow_id)
    if steps:
        out.print(f"{workflow_id}: running again: {', '.join(steps)}")
    else:
        out.print(f"{workflow_id}: nothing to resume (every step succeeded)")


@main.group()
def dlq() -> None:
    """The dead-letter queue: steps that failed for good, messages that could not be read."""


@dlq.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(as_json: bool) -> None:
    """Dead letters, newest first."""
    with _client() as client:
        entries = client.dead_letters.entries()
    if as_json:
        click.echo(json.dumps(entries))
    else:
        render.dead_letters(out, entries)


@dlq.command(name="show")
@click.argument("letter_id")
def dlq_show(letter_id: str) -> None:
    """One dead letter, whole (with its traceback)."""
    with _client() as client:
        click.echo(json.dumps(client.dead_letters.get(letter_id), indent=2))


@dlq.command(name="replay")
@click.argument("letter_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every step dead letter.")
def dlq_replay(letter_id: str | None, replay_all: bool) -> None:
    """Re-queue a dead-lettered step; its workflow goes on."""
    if bool(letter_id) == replay_all:
        raise InvalidInput("give one dead letter id, or --all")
    with _client() as client:
        if letter_id:
            out.print(f"replayed {letter_id}: workflow {client.replay(letter_id)} goes on")
            return
        workflows = client.replay_all()
        for workflow_id in workflows:
            out.print(f"workflow {workflow_id} goes on")
        out.print(f"replayed the dead letters of {len(workflows)} workflow(s)")


@dlq.command(name="purge")
def dlq_purge() -> None:
    """Delete every dead letter (their workflows stay failed)."""
    with _client() as client:
        out.print(f"purged {client.dead_letters.purge()} dead letter(s)")


@main.command()
def metrics() -> None:
    """Print the Prometheus metrics (what the HTTP API serves at /metrics)."""
    with _client() as client:
        sys.stdout.write(client.metrics_text())


# -- processes -------------------------------------------------------------------------


def _resolved_url(settings: Settings) -> str:
    from config.celery_app import resolve_redis_url

    return resolve_redis_url(settings)


@main.command()
@click.option("--pool", type=PRIORITIES, required=True, help="The priority class to serve.")
@click.option("--concurrency", type=click.IntRange(1, 512), help="Processes (default: topology).")
@click.option(
    "--index",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Tells several workers of one pool apart: node name POOL-INDEX@host.",
)
def worker(pool: str, concurrency: int | None, index: int) -> None:
    """A worker of one pool, consuming only its class's queue."""
    from config.queues import queue_for
    from workers.app import make_worker_app

    settings = _settings()
    klass = PriorityClass(pool)
    topology = load_topology(settings.topology)
    spec = topology.pool(klass)
    # Before the pool forks, so that its processes inherit it. Only ever raised: lowering
    # it needs privileges, and a worker started niced was niced on purpose.
    nice = topology.nice(klass)
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    app = make_worker_app(settings, _resolved_url(settings))
    app.worker_main(
        [
            "worker",
            "--queues",
            queue_for(klass),
            "--hostname",
            f"{pool}-{index}@%h",
            "--concurrency",
            str(concurrency or spec.concurrency),
            "--prefetch-multiplier",
            str(spec.prefetch),
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            *(["--task-events"] if settings.task_events else []),
            "--loglevel",
            "INFO",
        ]
    )


@main.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Serve the HTTP API on this port (0: any free port; logged).",
)
@click.option("--host", help="Address the HTTP API listens on (default: TREADLE_API_HOST).")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve the HTTP API without a token: local use only (as TREADLE_API_AUTH=off).",
)
def orchestrator(port: int | None, host: str | None, insecure_no_auth: bool) -> None:
    """The orchestrator process: submissions by message, crash recovery, HTTP API on --port."""
    from config.queues import ORCHESTRATOR_QUEUE
    from orchestrator.process import make_orchestrator_app

    settings = _settings()
    listener, auth = None, None
    if port is None:
        if host is not None or insecure_no_auth:
            raise InvalidInput("--host and --insecure-no-auth need --port")
    else:
        from orchestrator.api.auth import Auth
        from orchestrator.api.server import Listener

        auth = Auth.from_settings(settings, insecure_no_auth=insecure_no_auth)
        listener = Listener.bind(host or settings.api_host, port)
        if not auth.enabled:
            err.print(
                f"[yellow]warning:[/] the HTTP API on {listener.url} takes requests without a token"
            )
    app = make_orchestrator_app(settings, _resolved_url(settings), listener=listener, auth=auth)
    app.worker_main(
        [
            "worker",
            "--queues",
            ORCHESTRATOR_QUEUE,
            "--hostname",
            "orchestrator@%h",
            "--pool",
            "threads",
            "--concurrency",
            "4",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ]
    )


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 in a container).",
)
def flower(port: int, address: str) -> None:
    """Flower for this stack's app, with TREADLE_FLOWER_BASIC_AUTH (`treadle up` starts it)."""
    from config.celery_app import make_app

    settings = _settings()
    if settings.flower_basic_auth is None and address not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidInput(
            f"Flower on {address} would show every task to anyone: set "
            "TREADLE_FLOWER_BASIC_AUTH=user:password"
        )
    app = make_app(settings, _resolved_url(settings))
    # Flower reads the broker's kind from the connection's URL scheme, which a transport
    # named by its class would replace; it consumes nothing, so kombu's own will do.
    app.conf.broker_transport = None
    argv = ["flower", f"--port={port}", f"--address={address}"]
    if settings.flower_basic_auth is not None:
        argv.append(f"--basic-auth={settings.flower_basic_auth.get_secret_value()}")
    app.start(argv)


def _free_port(preferred: int) -> int:
    """``preferred`` if it is free (0: any), else any free loopback port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _running_stack(settings: Settings) -> Iterator[Any]:
    from orchestrator.stack import Stack

    port = _free_port(settings.flower_port)
    auth = (
        settings.flower_basic_auth.get_secret_value()
        if settings.flower_basic_auth is not None
        else f"treadle:{secrets.token_urlsafe(12)}"
    )
    from orchestrator.api.auth import Auth

    api_token = None
    if settings.api_auth:
        api_token = (
            settings.api_token.get_secret_value()
            if settings.api_token is not None
            else secrets.token_urlsafe(24)
        )
        # Refused here, before anything starts, rather than by the orchestrator child.
        Auth.from_settings(settings.model_copy(update={"api_token": SecretStr(api_token)}))
    with Stack(
        settings,
        flower_port=port,
        flower_auth=auth,
        api_port=_free_port(settings.api_port),
        api_token=api_token,
    ) as stack:
        yield stack


@main.command()
def up() -> None:
    """The whole stack in the foreground; Ctrl-C stops it cleanly."""
    settings = _settings()
    with _running_stack(settings) as stack:
        render.stack_banner(out, stack)
        stopping: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: stopping.append(s))
        while not stopping:
            dead = [c for c in stack.children if not c.alive()]
            if dead:
                err.print(f"{dead[0].name} exited; see {dead[0].log_path}. Stopping.")
                break
            time.sleep(0.2)
        out.print("stopping ...")
    out.print("stopped")


SAMPLE_MODULES = (
    "workers.samples.shop",
    "workers.samples.ml",
    "workers.samples.compliance",
    "workers.samples.images",
)


@main.command()
@click.option("--timeout", "timeout_s", default=120.0, show_default=True)
def demo(timeout_s: float) -> None:
    """Start the stack, run the sample workflows with live progress, summarise, stop."""
    from workers.samples import workflow_files

    modules = [m for m in os.environ.get("TREADLE_TASK_MODULES", "").split(",") if m]
    os.environ["TREADLE_TASK_MODULES"] = ",".join(dict.fromkeys([*modules, *SAMPLE_MODULES]))
    get_settings.cache_clear()
    settings = _settings()
    from orchestrator.client import Client

    with _running_stack(settings) as stack:
        render.stack_banner(out, stack)
        with Client.connect(settings, stack.redis_url) as client:
            files = workflow_files()
            ids = [client.submit(path) for path in files]
            out.print(f"submitted {len(ids)} sample workflows")
            finals = render.follow(out, ids, client.status, timeout_s=timeout_s)
            render.summary(out, finals, [p.name for p in files])
            render.flower_view(out, stack)
    if any(s["state"] != "succeeded" for s in finals):
        raise WorkflowFailed("some sample workflows did not succeed")


def _use_checkout() -> None:
    """Make ``ops.bench`` importable: it lives in the source checkout, beside the packages
    treadle installs, not inside them."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "ops" / "bench" / "runner.py").is_file():
        raise InvalidInput(
            f"treadle bench runs from a source checkout; there is no ops/bench/ in {root}"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


@main.command()
@click.option(
    "--quick",
    is_flag=True,
    help="One run of every scenario, at the same sizes but a soak of 8,000 steps.",
)
@click.option(
    "--runs", type=click.IntRange(1), help="Runs of each scenario (default 3; --quick 1)."
)
@click.option("--only", metavar="NAME,...", help="Only these scenarios (comma separated).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the results here as JSON.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a PNG of the ratios and goals here.",
)
@click.option("--tiny", is_flag=True, hidden=True, help="Tiny sizes: for the test suite.")
def bench(
    quick: bool,
    runs: int | None,
    only: str | None,
    json_path: Path | None,
    plot_path: Path | None,
    tiny: bool,
) -> None:
    """treadle side by side with raw Celery and Dramatiq, on one private Redis."""
    _use_checkout()
    from ops.bench.runner import (
        DEFAULT_RUNS,
        QUICK_RUNS,
        Options,
        UnknownScenario,
        missing_packages,
        run_bench,
    )
    from ops.bench.runner import select as select_scenarios
    from ops.bench.sizes import FULL, QUICK, TINY

    names = tuple(n.strip() for n in (only or "").split(",") if n.strip())
    try:
        missing = missing_packages(select_scenarios(names), plot=plot_path is not None)
    except UnknownScenario as exc:
        raise InvalidInput(f"--only: {exc}") from exc
    if missing:
        raise InvalidInput(
            f"treadle bench needs {', '.join(missing)}: pip install -e '.[bench]' (make bench does)"
        )
    options = Options(
        runs=runs or (QUICK_RUNS if quick else DEFAULT_RUNS),
        only=names,
        sizes=TINY if tiny else (QUICK if quick else FULL),
        progress=lambda line: out.print(line, highlight=False, markup=False),
    )
    report = run_bench(options)
    click.echo(report.table())
    if json_path is not None:
        report.write_json(json_path)
        out.print(f"wrote {json_path}", highlight=False, markup=False)
    if plot_path is not None:
        from ops.bench.plot import write_png

        write_png(report, plot_path)
        out.print(f"wrote {plot_path}", highlight=False, markup=False)


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point for tests: run the CLI in-process, return its exit code."""
    try:
        main.main(args=list(argv or []), standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.ClickException as exc:
        exc.show()
        return 2
    return 0


if __name__ == "__main__":
    main()
