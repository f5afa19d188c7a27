"""Bundles: the short steps of a wide stage delivered several to a message.

A parallel stage of 2,000 steps is 2,000 messages, and a step that does little costs
mostly its message: the worker's main process takes it off the queue, records it as
unacknowledged, hands it to a pool process over a pipe, and removes the record when it
ends, which on two cores is as much CPU as the step's own bookkeeping. When a stage's
steps run the same task, with the same time limits, on the same queue, and that task is
known to be short (as the workers measured it, ``orchestrator.metrics``),
the steps leave as messages of several steps each: as many as fit in
``Settings.bundle_target_s`` of expected run time, at most ``Settings.bundle_max``. The
expected run time is the task's mean, or if longer the floor of its 95th percentile
(``metrics.typical_run_s``): a task that is short only for some arguments is not short.

Nothing else changes for a step in a bundle. The worker claims, runs and records each
one by one, as it runs a chain's links in line (``workers.inline``): each has its own
attempt, audit records, limits, retries (as a message of its own), dead letter and
compensation, and a failure of one does not stop the others. A bundle stops taking new
steps once it has run four times its expected length, or for its in-line budget if
that is shorter (a step slower than its task usually is, say); the rest leave as
messages of their own. What a bundle costs: Flower and Celery's events
show one task per bundle, whose arguments name its steps, and a step's Celery time
limit counts from the start of its bundle (so a step can be timed out up to the in-line
budget early, at most 5 % of its limit, as in a chain run in line).

The message of a bundle is its first step's message, whose keyword argument ``bundle``
names the others: whatever reads a message as "workflow, step" still finds its first
step, and ``members`` finds them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

BUNDLE_KWARG = "bundle"

# A run time measured this short is the clock's resolution, not the task's.
_SHORTEST_S = 1e-5


# A bundle that has run this many times its target takes no more steps (its steps are
# not as short as measured): the rest leave on their own.
OUTRUN = 4.0


def size_of(width: int, run_s: float | None, target_s: float, most: int) -> int:
    """Steps per message for ``width`` steps of a task that typically runs ``run_s``
    (None: never measured); 1 sends each step as its own message."""
    if width < 2 or run_s is None or target_s <= 0 or most < 2:
        return 1
    fits = int(target_s / max(run_s, _SHORTEST_S))
    return max(1, min(fits, most, width))


def split(ids: Sequence[str], size: int) -> list[list[str]]:
    """``ids`` in order, cut into the fewest runs of at most ``size``, of lengths that
    differ by one at most (no short last bundle to wait on)."""
    if not ids:
        return []
    if size <= 1:
        return [[step_id] for step_id in ids]
    count = -(-len(ids) // size)
    base, longer = divmod(len(ids), count)
    out, start = [], 0
    for index in range(count):
        end = start + base + (1 if index < longer else 0)
        out.append(list(ids[start:end]))
        start = end
    return out


def can_bundle(step: Mapping[str, Any]) -> bool:
    """Whether a step may share its message: not a fan-out, which replaces its task with
    its items' canvas."""
    return not step.get("for_each")


def others_in(kwargs: Any) -> list[str] | None:
    """The steps after the first of a bundle's message, from its keyword arguments: None
    for a step's own message ({}), also None for anything else (not a treadle message)."""
    if not isinstance(kwargs, Mapping) or set(kwargs) != {BUNDLE_KWARG}:
        return None
    others = kwargs[BUNDLE_KWARG]
    if (
        not isinstance(others, (list, tuple))
        or not others
        or not all(isinstance(s, str) and s for s in others)
    ):
        return None
    return list(others)


def members(args: Any, kwargs: Any) -> list[str]:
    """Every step a message runs, first one first: one for a step's own message."""
    first = args[1] if isinstance(args, (list, tuple)) and len(args) == 2 else None
    if not isinstance(first, str):
        return []
    return [first, *(others_in(kwargs) or [])]
