"""Which shared limits a step takes when it runs: pure logic, no Redis.

A step takes, in this order: the named resources it lists (token buckets, leased
semaphores, circuit breakers from the topology), the lock of its ``concurrency_key``
(one step at a time per key value, in submission order), and its tenant's share of its
class (a per-tenant cap on running steps). ``orchestrator.flow`` applies them atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from config.topology import Topology

# Waiters of a concurrency key are ordered by submission: the workflow's sequence number
# times this, plus the step's topological rank (a workflow has fewer steps than this).
ORDER_STRIDE = 100_000
MAX_KEY_CHARS = 200

_FIELD = re.compile(r"\{([^{}]*)\}")
_ROOTS = ("params", "args", "item")


class KeyTemplateError(ValueError):
    """A ``concurrency_key`` template that cannot be filled in; the message says why."""


@dataclass(frozen=True)
class Limit:
    """One limit as ``orchestrator.flow`` applies it.

    ``kind`` is ``resource`` (named in the topology), ``key`` (a concurrency key value) or
    ``tenant`` (``<class>:<tenant>``); with ``name`` it makes the limit's Redis keys.
    """

    kind: str
    name: str
    concurrency: int | None = None
    rate_per_s: float | None = None
    burst: int = 1
    circuit_failures: int | None = None
    circuit_open_s: float | None = None
    ordered: bool = False  # waiters in submission order (reserved at submit), else arrival

    @property
    def label(self) -> str:
        """How logs and status name it: the resource, ``key <value>`` or ``tenant <t>``."""
        return self.name if self.kind == "resource" else f"{self.kind} {self.name}"

    def to_script(self, base_key: str) -> dict[str, Any]:
        """The limit as ``lua/flow.lua`` reads it (and keeps it, for ``from_script``)."""
        return {
            "base": base_key,
            "kind": self.kind,
            "name": self.name,
            "concurrency": self.concurrency,
            "rate": self.rate_per_s,
            "burst": self.burst,
            "failures": self.circuit_failures,
            "open_s": self.circuit_open_s,
            "ordered": self.ordered,
        }

    @classmethod
    def from_script(cls, data: Mapping[str, Any]) -> Limit:
        return cls(
            data["kind"],
            data["name"],
            concurrency=data.get("concurrency"),
            rate_per_s=data.get("rate"),
            burst=int(data.get("burst") or 1),
            circuit_failures=data.get("failures"),
            circuit_open_s=data.get("open_s"),
            ordered=bool(data.get("ordered")),
        )


def template_fields(template: str) -> list[tuple[str, ...]]:
    """The dotted paths a template reads, e.g. ``"{params.sku}-{item}"`` ->
    ``[("params", "sku"), ("item",)]``; raises KeyTemplateError on a malformed one."""
    if template.count("{") != template.count("}"):
        raise KeyTemplateError(f"unbalanced braces in {template!r}")
    paths = []
    for match in _FIELD.finditer(template):
        path = tuple(match.group(1).strip().split("."))
        if not path[0] or path[0] not in _ROOTS or any(not p for p in path):
            raise KeyTemplateError(
                f"{{{match.group(1)}}} is not params.<name>, args.<name> or item[.<name>]"
            )
        paths.append(path)
    if not paths:
        raise KeyTemplateError(f"{template!r} reads nothing: a key needs a {{params.<name>}} field")
    return paths


def render_key(
    template: str,
    params: Mapping[str, Any],
    args: Mapping[str, Any],
    item: Any = None,
    has_item: bool = False,
) -> str:
    """The key value for one step; raises KeyTemplateError naming a missing field."""
    roots: dict[str, Any] = {"params": params, "args": args}
    if has_item:
        roots["item"] = item

    def fill(match: re.Match[str]) -> str:
        path = match.group(1).strip().split(".")
        if path[0] not in roots:
            raise KeyTemplateError(f"{{{match.group(1)}}}: only a for_each step has an item")
        value: Any = roots[path[0]]
        for i, part in enumerate(path[1:], start=1):
            if not isinstance(value, Mapping) or part not in value:
                raise KeyTemplateError(f"{{{match.group(1)}}}: no {'.'.join(path[: i + 1])}")
            value = value[part]
        if isinstance(value, str):
            return value
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    template_fields(template)
    key = _FIELD.sub(fill, template)
    if len(key) > MAX_KEY_CHARS:
        raise KeyTemplateError(f"the key is {len(key)} characters; at most {MAX_KEY_CHARS}")
    return key


def needs_item(template: str) -> bool:
    return any(path[0] == "item" for path in template_fields(template))


def order_score(sequence: int, rank: int) -> int:
    """Where a step with a concurrency key stands among the waiters of its key."""
    return sequence * ORDER_STRIDE + rank


def limits_for(
    topology: Topology,
    definition: Mapping[str, Any],
    params: Mapping[str, Any],
    pool: str,
    tenant: str,
) -> list[Limit]:
    """Every limit the step with this stored definition takes, in the order taken. A
    fan-out step takes none: its items take them, each for itself."""
    if definition.get("for_each"):
        return []
    limits = []
    for name in _unique(definition.get("resources") or ()):
        resource = topology.resources.get(name)
        if resource is None:
            # The topology changed after the workflow was submitted: a resource that is
            # gone limits nothing any more.
            continue
        circuit = resource.circuit
        limits.append(
            Limit(
                "resource",
                name,
                concurrency=resource.concurrency,
                rate_per_s=resource.rate_per_s(),
                burst=resource.burst or 1,
                circuit_failures=circuit.failures if circuit else None,
                circuit_open_s=circuit.open_s if circuit else None,
            )
        )
    template = definition.get("concurrency_key")
    if template:
        key = render_key(
            template,
            params,
            definition.get("args") or {},
            definition.get("item"),
            has_item="item_of" in definition,
        )
        limits.append(Limit("key", key, concurrency=1, ordered=True))
    share = topology.pool(pool).tenant_limit if tenant else None
    if share is not None:
        limits.append(Limit("tenant", f"{pool}:{tenant}", concurrency=share))
    return limits


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return list(seen)
