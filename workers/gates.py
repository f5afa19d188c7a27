"""Whether a step runs at all: its trigger rule, then its ``when`` condition. Pure.

Skipping propagates: under the default ``trigger: all_success`` a step runs only if every
dependency succeeded, so the dependents of a skipped step are skipped too, and theirs,
down the graph. A step with ``trigger: all_done`` runs once its dependencies have ended,
however they ended — the place to put a join, a report or a cleanup that must happen
whichever branches were taken. Its ``when`` is then evaluated with the results of the
dependencies that did succeed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.conditions import parse_condition


def skip_reason(
    definition: Mapping[str, Any],
    dependency_states: Mapping[str, str],
    params: Mapping[str, Any],
    results: Mapping[str, Any],
) -> str | None:
    """Why the step must be skipped, or None if it runs. Raises ConditionError when its
    condition cannot be evaluated (a permanent failure of the step)."""
    if definition.get("trigger", "all_success") == "all_success":
        for dep in definition.get("after") or ():
            state = dependency_states.get(dep)
            if state != "succeeded":
                return f"dependency {dep} {state or 'did not run'}"
    when = definition.get("when")
    if when and not parse_condition(when).evaluate(params, results):
        return f"condition is false: {when}"
    return None
