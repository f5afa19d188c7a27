"""How the CLI shows things: plans, status tables, live progress, summaries."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from config.redact import redact_url
from orchestrator.audit_report import AuditReport
from orchestrator.compiler import Chain, Chord, Node, Task
from orchestrator.compiler import Group as CanvasGroup
from orchestrator.model import Step
from orchestrator.planning import Plan
from orchestrator.states import WORKFLOW_FINAL

StatusReader = Callable[[str], dict[str, Any]]

STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "dead-lettered": "red",
    "cancelled": "yellow",
    "skipped": "yellow",
    "retrying": "magenta",
    "running": "cyan",
    "queued": "blue",
    "pending": "dim",
    "parked": "magenta",
}


def _state(state: str | None) -> str:
    state = state or "?"
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3] if ts else "-"


def _secs(start: float | None, end: float | None) -> str:
    return f"{end - start:.3f}s" if start and end else "-"


# -- plan ----------------------------------------------------------------------------------


def _step_label(step: Step) -> str:
    label = f"[bold]{step.id}[/] [dim]{step.task}[/]"
    if step.for_each:
        limit = f", at most {step.max_parallel} at once" if step.max_parallel else ""
        label += f" [magenta]for each item of {step.for_each}{limit}[/]"
    if step.when:
        label += f" [yellow]when {step.when}[/]"
    if step.trigger == "all_done":
        label += " [cyan](all_done)[/]"
    return label


def _canvas_tree(node: Node, tree: Tree, tasks: dict[str, Step]) -> None:
    if isinstance(node, Task):
        tree.add(_step_label(tasks[node.step]))
    elif isinstance(node, Chain):
        branch = tree.add("[cyan]chain[/] (one after another)")
        for item in node.items:
            _canvas_tree(item, branch, tasks)
    elif isinstance(node, CanvasGroup):
        branch = tree.add("[magenta]group[/] (all at once)")
        for item in node.items:
            _canvas_tree(item, branch, tasks)
    else:
        assert isinstance(node, Chord)
        branch = tree.add(
            "[yellow]chord[/] (header in parallel, then body: published when a counter "
            "of the header's ends reaches zero)"
        )
        header = branch.add("header")
        for item in node.header:
            _canvas_tree(item, header, tasks)
        _canvas_tree(node.body, branch.add("body"), tasks)


def plan(console: Console, the_plan: Plan) -> None:
    wf = the_plan.workflow
    compiled = the_plan.compiled
    tree = Tree(f"[bold]{wf.name}[/] ({len(wf.steps)} steps, priority {wf.priority.value})")
    tasks = wf.by_id
    if compiled.canvas is not None:
        _canvas_tree(compiled.canvas, tree, tasks)
    if compiled.counters:
        after = {s.id: s.after for s in wf.steps}
        branch = tree.add(
            "[green]counters[/] (not series-parallel: each step starts when its own "
            "dependencies are done)"
        )
        for step in wf.steps:
            if step.id in compiled.counters:
                deps = ", ".join(after[step.id]) or "nothing"
                branch.add(f"{_step_label(step)} waits for {deps}")
    console.print(tree)
    unit = "s" if the_plan.durations_given else "s (1 s a step: pass --durations FILE)"
    console.print(
        f"critical path: {' -> '.join(the_plan.critical_path)} "
        f"({the_plan.critical_length_s:g} {unit})"
    )
    console.print(f"width: {the_plan.width} (most steps that can run at once)")
    est = the_plan.estimates
    pools = ", ".join(f"{k} {v}" for k, v in sorted(est.slots.items()))
    table = Table(title="estimated makespan", show_edge=False, header_style="bold")
    for column in ("architecture", "makespan", "vs sequential"):
        table.add_column(column)
    for label, value in (
        ("all sequential (the long walk)", est.sequential_s),
        ("unlimited parallel (the short path)", est.parallel_s),
        (f"as configured ({pools} workers)", est.configured_s),
    ):
        ratio = value / est.sequential_s if est.sequential_s else 1.0
        table.add_row(label, f"{value:g} s", f"{ratio:.0%}")
    console.print(table)


# -- status --------------------------------------------------------------------------------


def status_table(console: Console, status: dict[str, Any]) -> None:
    console.print(
        f"[bold]{status['name']}[/] {status['id']}  {_state(status['state'])}  "
        f"priority {status['priority']}  submitted {_time(status['submitted_at'])}  "
        f"took {_secs(status['submitted_at'], status['finished_at'])}"
    )
    table = Table(show_edge=False, header_style="bold")
    for column in ("step", "task", "state", "att", "queued", "started", "ran", "worker", "after"):
        table.add_column(column)
    for step in status["steps"]:
        table.add_row(
            step["id"],
            step["task"],
            _state(step["state"]),
            str(step["attempts"]),
            _time(step["queued_at"]),
            _time(step["started_at"]),
            _secs(step["started_at"], step["finished_at"]),
            step["worker"] or "-",
            ", ".join(step["after"]) or "-",
        )
    console.print(table)
    for step in status["steps"]:
        if step.get("error"):
            console.print(f"[red]{step['id']}[/]: {step['error']}")


def audit_report(console: Console, report: AuditReport) -> None:
    verdict = "[green]ok[/]" if report.ok else "[red]VIOLATED[/]"
    console.print(f"audit of {report.workflow_id}: {verdict} ({report.records} records)")
    for problem in report.problems:
        console.print(f"  [red]{problem}[/]")
    if not report.timings:
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("step", "attempts", "ready", "started", "waited", "ran"):
        table.add_column(column)
    for t in report.timings:
        table.add_row(
            t.step_id,
            str(t.attempts),
            _time(t.ready_at),
            _time(t.started_at),
            f"{t.wait_s:.3f}s" if t.wait_s is not None else "-",
            f"{t.run_s:.3f}s" if t.run_s is not None else "-",
        )
    console.print(table)


def dead_letters(console: Console, entries: Sequence[dict[str, Any]]) -> None:
    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "filed", "workflow", "step", "task", "attempts", "error"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            e["id"],
            _time(e.get("at")),
            e.get("workflow_id") or "-",
            e.get("step_id") or "-",
            e.get("task") or "-",
            str(e.get("attempts", "-")),
            (e.get("error") or "")[:80],
        )
    console.print(table)
    console.print(f"{len(entries)} dead letter(s)")


def list_table(console: Console, rows: Sequence[dict[str, Any]]) -> None:
    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "name", "state", "priority", "steps", "submitted", "took"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"],
            row["name"],
            _state(row["state"]),
            row["priority"],
            f"{row['steps_done']}/{row['steps_total']}",
            _time(row["submitted_at"]),
            _secs(row["submitted_at"], row["finished_at"]),
        )
    console.print(table)


def watch(console: Console, workflow_id: str, read: StatusReader) -> dict[str, Any]:
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            current = read(workflow_id)
            live.update(_status_renderable(current))
            if current["state"] in WORKFLOW_FINAL:
                return current
            time.sleep(0.25)


def _status_renderable(status: dict[str, Any]) -> Table:
    table = Table(title=f"{status['name']} {status['id']} {status['state']}", show_edge=False)
    for column in ("step", "state", "att", "ran", "worker"):
        table.add_column(column)
    for step in status["steps"]:
        table.add_row(
            step["id"],
            _state(step["state"]),
            str(step["attempts"]),
            _secs(step["started_at"], step["finished_at"]),
            step["worker"] or "-",
        )
    return table


def follow(
    console: Console,
    workflow_ids: Sequence[str],
    read: StatusReader,
    timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """A live progress bar of steps done per workflow, until all have ended."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
    )
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with progress:
        bars = {}
        for wid in workflow_ids:
            first = read(wid)
            bars[wid] = progress.add_task(
                f"{first['name']:<28}", total=first["steps_total"], state=_state(first["state"])
            )
        while True:
            statuses = [read(wid) for wid in workflow_ids]
            for status in statuses:
                progress.update(
                    bars[status["id"]],
                    # A fan-out adds its items as steps while it runs.
                    total=status["steps_total"],
                    completed=status["steps_done"],
                    state=_state(status["state"]),
                )
            if all(s["state"] in WORKFLOW_FINAL for s in statuses):
                return statuses
            if deadline is not None and time.monotonic() > deadline:
                console.print(f"[red]gave up waiting after {timeout_s} s[/]")
                return statuses
            time.sleep(0.1)


def summary(console: Console, statuses: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    table = Table(title="summary", header_style="bold")
    for column in ("spec", "state", "steps", "class", "took", "ran on"):
        table.add_column(column, no_wrap=column in ("spec", "state"))
    for label, status in zip(labels, statuses, strict=True):
        workers = sorted({s["worker"].split("@")[0] for s in status["steps"] if s["worker"]})
        table.add_row(
            label,
            _state(status["state"]),
            f"{status['steps_done']}/{status['steps_total']}",
            status["priority"],
            _secs(status["submitted_at"], status["finished_at"]),
            ", ".join(workers),
        )
    console.print(table)
    ok = sum(s["state"] == "succeeded" for s in statuses)
    console.print(f"{ok} of {len(statuses)} workflows succeeded")


def stack_banner(console: Console, stack: Any) -> None:
    console.print(f"[bold]treadle is up[/]  redis: {redact_url(stack.redis_url)}")
    for child in stack.children:
        console.print(f"  {child.name:<14} pid {child.process.pid:<8} log {child.log_path}")
    if stack.flower_port:
        user, _, password = (stack.flower_auth or "").partition(":")
        console.print(f"  Flower: {stack.flower_url()}  (user {user!r}, password {password!r})")
    if stack.api_port is not None:
        token = f"token {stack.api_token!r}" if stack.api_token else "no token: auth is off"
        console.print(f"  API:    {stack.api_url()}  ({token})")
        console.print(f"  Dashboard: {stack.api_url('/dashboard')}")


def flower_view(console: Console, stack: Any) -> None:
    """What Flower shows of this run: every pool's workers and the tasks they ran."""
    try:
        workers = stack.flower_api("/api/workers?refresh=1")
        tasks = stack.flower_api("/api/tasks?limit=10000")
    except OSError as exc:
        console.print(f"[yellow]Flower did not answer: {exc}[/]")
        return
    console.print(f"Flower sees workers: {', '.join(sorted(workers))}")
    by_state: dict[str, int] = {}
    for task in tasks.values():
        by_state[task.get("state", "?")] = by_state.get(task.get("state", "?"), 0) + 1
    console.print(
        # A bundle of short steps (orchestrator.bundles) is one task to Flower.
        f"Flower saw {len(tasks)} step messages: "
        + ", ".join(f"{n} {state.lower()}" for state, n in sorted(by_state.items()))
    )
    console.print(f"Open {stack.flower_url()} while `treadle up` runs to watch them live.")
