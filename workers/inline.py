"""Chains run in line: after a step, the worker that ran it runs the chain's next step
itself, when nothing is gained by sending it through the broker.

Celery runs a chain one message per link: the worker publishes the next link, acknowledges
its own message, and some worker takes the next one off the queue, four round trips and a
queue wake-up per hop whose step does nothing but wait for the last. When the next link
goes to the same queue, has the same time limits and is a plain step of the same workflow,
the worker claims and runs it at once instead (as Temporal's eager activities do), for as
long as the in-line budget allows (``Settings.inline_chain_s``, at most 5 % of the step's
soft time limit, which keeps counting from the first step of the run: a step run in line
can be timed out that much early); then the rest of the chain is published as usual, at
the back of its queue, so that a long chain takes turns with other work.

The message of the first step stays unacknowledged until the run ends, so a worker lost
meanwhile loses nothing: the message comes back, finds its step ended and its chain
stalled at a step that was never started or whose attempt was lost, and goes on from
there (``StepRuntime``); the recovery sweep does the same through the first step's ticket.
Each step run in line records whose message carried it (``inline_of``, ``inline_task_id``).

The steps of a bundle (``orchestrator.bundles``) run in line the same way, each under the
request its own message would have had (``member_request``), so that whatever a step
sends again (a retry, a wait for a limit, a parked step) is a message of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery.app.task import Context

from orchestrator.tickets import KEEP_GOING_HEADER

# Beyond this share of a step's soft time limit, the next one goes through the broker.
SHARE_OF_TIME_LIMIT = 0.05


def step_of_link(link: Mapping[str, Any], workflow_id: str) -> str | None:
    """The step id a chain link runs, if it is a plain step of this workflow."""
    if link.get("subtask_type"):
        return None  # a group or chord
    args = link.get("args")
    if (
        not isinstance(args, (list, tuple))
        or len(args) != 2
        or args[0] != workflow_id
        or not isinstance(args[1], str)
    ):
        return None
    return args[1]


def links_in_order(request: Any) -> list[Mapping[str, Any]]:
    """The links still to run after this request's step, first one first (Celery keeps
    them last one first)."""
    return list(reversed(getattr(request, "chain", None) or []))


def next_in_line(request: Any, workflow_id: str, elapsed_s: float, budget_s: float) -> str | None:
    """The step to run in line after the one of ``request``, or None to leave the rest of
    the chain to the broker."""
    chain = getattr(request, "chain", None)
    if not chain or getattr(request, "chord", None) or getattr(request, "called_directly", True):
        return None
    link = chain[-1]
    step_id = step_of_link(link, workflow_id)
    options = link.get("options") or {}
    if step_id is None or options.get("countdown") or options.get("eta"):
        return None
    if options.get("link") or options.get("link_error") or options.get("chord"):
        return None
    routing = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    if not routing or options.get("queue") != routing:
        return None
    hard, soft = _limits(request)
    if (options.get("time_limit"), options.get("soft_time_limit")) != (hard, soft):
        return None
    return step_id if elapsed_s < allowance(request, budget_s) else None


def allowance(request: Any, budget_s: float) -> float:
    """How long a delivery may go on starting steps in line."""
    soft = _limits(request)[1]
    return budget_s if soft is None else min(budget_s, soft * SHARE_OF_TIME_LIMIT)


def member_request(carrier: Any, workflow_id: str, step_id: str, index: int) -> Context:
    """The request step ``index`` of the bundle ``carrier`` delivers would have had as a
    message of its own: the first step keeps the bundle's task id, the others get one
    derived from it (the same on a redelivery)."""
    hard, soft = _limits(carrier)
    return Context(
        id=carrier.id if index == 0 else f"{carrier.id}.{index}",
        task=carrier.task,
        args=[workflow_id, step_id],
        kwargs={},
        root_id=getattr(carrier, "root_id", None),
        parent_id=getattr(carrier, "parent_id", None),
        hostname=getattr(carrier, "hostname", None),
        delivery_info=getattr(carrier, "delivery_info", None),
        reply_to=getattr(carrier, "reply_to", None),
        timelimit=(hard, soft),
        time_limit=hard,
        soft_time_limit=soft,
        argsrepr=f"workflow={workflow_id} step={step_id}",
        headers=dict(getattr(carrier, "headers", None) or {}),
        called_directly=False,
        is_eager=False,
        retries=0,
        **({KEEP_GOING_HEADER: True} if getattr(carrier, KEEP_GOING_HEADER, False) else {}),
    )


def request_of(link: Mapping[str, Any], rest: Sequence[Any], carrier: Any) -> Context:
    """The request the next link's message would have had, delivered with ``carrier``'s.

    It carries the keep-going header: a link already ended (another copy of the chain ran
    it) is passed over, as a re-issued message does (``orchestrator.orphans``)."""
    options = link.get("options") or {}
    hard, soft = options.get("time_limit"), options.get("soft_time_limit")
    return Context(
        id=options.get("task_id"),
        task=link["task"],
        args=list(link["args"]),
        kwargs={},
        chain=list(rest) or None,
        root_id=getattr(carrier, "root_id", None),
        parent_id=getattr(carrier, "id", None),
        hostname=getattr(carrier, "hostname", None),
        delivery_info=getattr(carrier, "delivery_info", None),
        reply_to=options.get("reply_to"),
        timelimit=(hard, soft),
        time_limit=hard,
        soft_time_limit=soft,
        argsrepr=options.get("argsrepr"),
        headers={KEEP_GOING_HEADER: True},
        called_directly=False,
        is_eager=False,
        retries=0,
        **{KEEP_GOING_HEADER: True},
    )


def _limits(request: Any) -> tuple[float | None, float | None]:
    limits = getattr(request, "timelimit", None) or (None, None)
    return limits[0], limits[1]
