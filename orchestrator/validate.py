"""Check a workflow spec and report every problem at once, each with its location.

Pure: the task catalog, limits and resource names are passed in.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from orchestrator.conditions import ConditionError, parse_condition
from orchestrator.dag import CycleError, Graph
from orchestrator.errors import InvalidInput, Problem
from orchestrator.limits import KeyTemplateError, needs_item, render_key
from orchestrator.model import (
    ParallelBlock,
    SequentialBlock,
    StageItem,
    Step,
    Workflow,
    WorkflowSpec,
    normalise,
)


class TaskCatalog(Protocol):
    def __contains__(self, name: object) -> bool: ...
    def names(self) -> list[str]: ...
    def argument_problems(
        self, name: str, args: Mapping[str, Any], where: str, provided: Iterable[str] = ()
    ) -> list[Problem]: ...


@dataclass(frozen=True)
class Limits:
    max_steps: int = 20_000
    max_params_bytes: int = 256 * 1024
    max_args_bytes: int = 64 * 1024
    max_step_timeout_s: float = 3600.0


class _SpecLoader(yaml.SafeLoader):
    """YAML as JSON means it: a repeated key is an error, and a bare date stays a string
    (a spec's values must cross the wire as JSON)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _load_json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_json_object)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: no object tags


def load_spec_text(text: str, source: str) -> Any:
    """Parse JSON or YAML text; a syntax error is bad input with its line."""
    stripped = text.lstrip()
    try:
        if source.endswith(".json"):
            return _load_json(text)
        if stripped.startswith(("{", "[")):
            try:
                return _load_json(text)
            except json.JSONDecodeError as json_error:
                # Also YAML in flow style (`{name: x, steps: [...]}`); if it is not that
                # either, it was meant as JSON and the JSON error is the helpful one.
                try:
                    return _load_yaml(text)
                except yaml.YAMLError:
                    raise json_error from None
        return _load_yaml(text)
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise InvalidInput(
                Problem(f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}"),
                source,
            ) from exc
        raise InvalidInput(Problem("", f"not valid JSON: {exc}"), source) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(Problem(where, f"not valid YAML: {reason}"), source) from exc


def load_spec_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(Problem("", f"cannot read: {exc.strerror}"), str(path)) from exc
    return load_spec_text(text, str(path))


def validate(
    raw: Any,
    catalog: TaskCatalog,
    *,
    limits: Limits = Limits(),
    resources: Iterable[str] = (),
    source: str | None = None,
) -> Workflow:
    """The normalised workflow, or InvalidInput listing every problem found."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(Problem("", "a workflow spec must be a mapping (object)"), source)
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput([_shape_problem(err) for err in exc.errors()], source) from exc

    problems: list[Problem] = []
    if spec.stages is not None:
        # A stages form without steps always has an empty block, reported here.
        problems.extend(_empty_blocks(spec.stages, "stages"))
    elif not spec.steps:
        problems.append(Problem("steps", "the workflow has no steps"))
    workflow = normalise(spec)
    problems.extend(_size_problems(workflow, limits))
    problems.extend(_identity_problems(workflow))
    problems.extend(_step_problems(workflow, catalog, limits, set(resources)))
    problems.extend(_cycle_problems(workflow))
    if problems:
        raise InvalidInput(problems, source)
    return workflow


def _shape_problem(err: Any) -> Problem:
    where = ""
    for part in err["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part in ("SequentialBlock", "ParallelBlock", "StageStep"):
            # pydantic names the union member it tried; users did not write it.
            continue
        else:
            where += f".{part}" if where else str(part)
    what = err["msg"]
    if err["type"] == "extra_forbidden":
        what = "unknown field"
    elif err["type"] == "value_error":
        what = what.removeprefix("Value error, ")
    return Problem(where, what)


def _empty_blocks(items: list[StageItem], where: str) -> Iterable[Problem]:
    if not items:
        yield Problem(where, "empty block: a block needs at least one step")
    for i, item in enumerate(items):
        if isinstance(item, SequentialBlock):
            yield from _empty_blocks(item.sequential, f"{where}[{i}].sequential")
        elif isinstance(item, ParallelBlock):
            yield from _empty_blocks(item.parallel, f"{where}[{i}].parallel")


def _size_problems(workflow: Workflow, limits: Limits) -> Iterable[Problem]:
    if len(workflow.steps) > limits.max_steps:
        yield Problem("steps", f"{len(workflow.steps)} steps; at most {limits.max_steps}")
    size = _json_size(workflow.params)
    if size > limits.max_params_bytes:
        yield Problem("params", f"{size} bytes of JSON; at most {limits.max_params_bytes}")
    for step in workflow.steps:
        size = _json_size(step.args)
        if size > limits.max_args_bytes:
            yield Problem(
                f"{step.where}.args", f"{size} bytes of JSON; at most {limits.max_args_bytes}"
            )


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def _identity_problems(workflow: Workflow) -> Iterable[Problem]:
    first_at: dict[str, str] = {}
    for step in workflow.steps:
        if step.id in first_at:
            yield Problem(
                f"{step.where}.id", f"duplicate step id {step.id!r} (first at {first_at[step.id]})"
            )
        else:
            first_at.setdefault(step.id, step.where)
    for step in workflow.steps:
        if step.where.startswith("steps[") and step.id in step.after:
            yield Problem(f"{step.where}.after", f"step {step.id!r} depends on itself")
        if step.for_each is not None and step.for_each not in first_at:
            yield Problem(
                f"{step.where}.for_each",
                f"unknown step {step.for_each!r}{_hint(step.for_each, first_at)}",
            )
        for dep in step.after:
            if dep == step.for_each:
                continue  # reported above, where the user wrote it
            if dep not in first_at:
                yield Problem(f"{step.where}.after", f"unknown step {dep!r}{_hint(dep, first_at)}")


def _step_problems(
    workflow: Workflow, catalog: TaskCatalog, limits: Limits, resources: set[str]
) -> Iterable[Problem]:
    for step in workflow.steps:
        if step.task not in catalog:
            yield Problem(
                f"{step.where}.task",
                f"unknown task {step.task!r}{_hint(step.task, catalog.names())}",
            )
        else:
            # A fan-out step gets each item as `item` when its function takes one.
            provided = ("item",) if step.for_each else ()
            yield from catalog.argument_problems(
                step.task, step.args, f"{step.where}.args", provided
            )
        if step.when is not None:
            yield from _condition_problems(step)
        if step.compensate is not None and step.compensate not in catalog:
            yield Problem(f"{step.where}.compensate", f"unknown task {step.compensate!r}")
        if step.timeout_s is not None and step.timeout_s > limits.max_step_timeout_s:
            yield Problem(
                f"{step.where}.timeout_s",
                f"{step.timeout_s} s is longer than the longest allowed "
                f"({limits.max_step_timeout_s} s, TREADLE_MAX_STEP_TIMEOUT_S)",
            )
        if step.concurrency_key is not None:
            yield from _key_problems(step, workflow.params)
        for i, name in enumerate(step.resources):
            if name not in resources:
                yield Problem(
                    f"{step.where}.resources[{i}]",
                    f"unknown resource {name!r}{_hint(name, resources)}",
                )


def _key_problems(step: Step, params: Mapping[str, Any]) -> Iterable[Problem]:
    """A concurrency key must be fillable now from params and args; an item field only
    on a fan-out step, where it is filled in for each item."""
    where, template = f"{step.where}.concurrency_key", step.concurrency_key or ""
    try:
        if needs_item(template) and not step.for_each:
            yield Problem(where, "reads {item}, but only a for_each step has items")
            return
        if not needs_item(template):
            render_key(template, params, step.args)
    except KeyTemplateError as exc:
        yield Problem(where, str(exc))


def _condition_problems(step: Step) -> Iterable[Problem]:
    try:
        condition = parse_condition(step.when or "")
    except ConditionError as exc:
        yield Problem(f"{step.where}.when", str(exc))
        return
    for ref in sorted(condition.references - set(step.after)):
        yield Problem(
            f"{step.where}.when",
            f"reads results of {ref!r}, which is not a dependency of this step (add it to after)",
        )


def _cycle_problems(workflow: Workflow) -> Iterable[Problem]:
    # Checked even when other problems were found: edges to unknown steps are left out and
    # a duplicated id keeps its first definition, so every cycle is still reported.
    after: dict[str, tuple[str, ...]] = {}
    for step in workflow.steps:
        after.setdefault(step.id, step.after)
    # A self-dependency is reported on its own, with its location.
    after = {sid: tuple(d for d in deps if d in after and d != sid) for sid, deps in after.items()}
    graph = Graph.from_after(after)
    try:
        graph.topological_order()
    except CycleError as exc:
        yield Problem("", str(exc))


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
