"""The ``@task`` decorator and the catalog of task functions it fills.

A registry, not a Celery app: decorating a function only records it. Workers turn every
recorded task into a Celery task when their app is built (``workers.app``); the
orchestrator uses the same catalog to check task names and arguments at submission.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from orchestrator.errors import InvalidInput, Problem
from orchestrator.model import RetryPolicy

CONTEXT_PARAMETER = "ctx"
BUILTIN_MODULES = ("workers.builtins",)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskDefinition:
    """A task function and the defaults its steps get unless the spec overrides them."""

    name: str
    func: Callable[..., Any]
    args_model: type[BaseModel]
    wants_context: bool
    retry: RetryPolicy | None = None
    timeout_s: float | None = None
    resources: tuple[str, ...] = ()

    @property
    def takes_item(self) -> bool:
        return "item" in self.args_model.model_fields

    def bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments the function is called with; raises ValidationError."""
        validated = self.args_model.model_validate(dict(args))
        kwargs = {name: getattr(validated, name) for name in type(validated).model_fields}
        kwargs.update(validated.model_extra or {})
        return kwargs


def _args_model(name: str, func: Callable[..., Any]) -> tuple[type[BaseModel], bool]:
    """A pydantic model of the function's keyword arguments, without ``ctx``."""
    fields: dict[str, Any] = {}
    wants_context = False
    extra: Literal["allow", "forbid"] = "forbid"
    for param in inspect.signature(func).parameters.values():
        if param.name == CONTEXT_PARAMETER:
            wants_context = True
            continue
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind in (param.POSITIONAL_ONLY, param.VAR_POSITIONAL):
            # Step args are a JSON object: only named parameters can receive them.
            raise TypeError(f"task {name}: parameter {param.name!r} cannot be passed by name")
        annotation = Any if param.annotation is param.empty else param.annotation
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    model = create_model(
        f"Args[{name}]",
        __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True),
        **fields,
    )
    return model, wants_context


class Registry:
    """Task definitions by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDefinition] = {}

    def add(self, definition: TaskDefinition) -> None:
        known = self._tasks.get(definition.name)
        if known is not None and _origin(known.func) != _origin(definition.func):
            raise ValueError(
                f"task name {definition.name!r} is taken by {_origin(known.func)}; "
                f"cannot register {_origin(definition.func)} under it"
            )
        self._tasks[definition.name] = definition

    def get(self, name: str) -> TaskDefinition | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Any:
        return iter(self._tasks.values())

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def argument_problems(
        self, name: str, args: Mapping[str, Any], where: str, provided: Iterable[str] = ()
    ) -> list[Problem]:
        """Why ``args`` cannot be passed to task ``name`` (empty when they can).

        ``provided`` names arguments the runtime supplies itself (a fan-out's ``item``):
        their absence from ``args`` is not a problem.
        """
        definition = self._tasks[name]
        supplied = set(provided)
        try:
            definition.bind(args)
        except ValidationError as exc:
            return [
                _argument_problem(where, err)
                for err in exc.errors()
                if not (err["type"] == "missing" and err["loc"] and err["loc"][0] in supplied)
            ]
        return []


def _argument_problem(where: str, err: Any) -> Problem:
    loc = ".".join(str(p) for p in err["loc"])
    what = err["msg"]
    if err["type"] == "missing":
        what = "missing required argument"
    elif err["type"] == "extra_forbidden":
        what = "unexpected argument (not a parameter of the task function)"
    return Problem(f"{where}.{loc}" if loc else where, what)


def _origin(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


REGISTRY = Registry()


@overload
def task(func: F) -> F: ...
@overload
def task(
    *,
    name: str | None = None,
    retry: RetryPolicy | Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    resources: Iterable[str] = (),
) -> Callable[[F], F]: ...


def task(
    func: F | None = None,
    *,
    name: str | None = None,
    retry: RetryPolicy | Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    resources: Iterable[str] = (),
) -> F | Callable[[F], F]:
    """Make a plain function a treadle task; it stays callable as before.

    Steps pass their ``args`` by parameter name; a parameter named ``ctx`` receives the
    :class:`~workers.context.StepContext` (params, dependency results, attempt, ...).
    """

    def register(fn: F) -> F:
        task_name = name or f"{fn.__module__}.{fn.__name__}"
        model, wants_context = _args_model(task_name, fn)
        policy = RetryPolicy.model_validate(retry) if isinstance(retry, Mapping) else retry
        REGISTRY.add(
            TaskDefinition(
                name=task_name,
                func=fn,
                args_model=model,
                wants_context=wants_context,
                retry=policy,
                timeout_s=timeout_s,
                resources=tuple(resources),
            )
        )
        return fn

    return register(func) if func is not None else register


def load_task_modules(modules: Iterable[str]) -> Registry:
    """Import the built-ins and the user's task modules; a failed import is bad input."""
    problems: list[Problem] = []
    for module in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import-time error of a user module is reported
            problems.append(Problem(f"TREADLE_TASK_MODULES: {module}", f"cannot import: {exc!r}"))
    if problems:
        raise InvalidInput(problems)
    return REGISTRY
