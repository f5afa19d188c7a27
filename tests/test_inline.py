"""Which chain link runs in line (workers/inline.py): pure decisions on Celery's request."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.tickets import KEEP_GOING_HEADER
from workers.inline import links_in_order, next_in_line, request_of, step_of_link

WID = "wf-1"


def link(step_id: str, **options: Any) -> dict[str, Any]:
    return {
        "task": "treadle.noop",
        "args": [WID, step_id],
        "options": {
            "queue": "treadle.default",
            "time_limit": 330.0,
            "soft_time_limit": 300.0,
            "task_id": f"task-{step_id}",
            **options,
        },
        "subtask_type": None,
    }


def request(*chain_last_first: dict[str, Any], **more: Any) -> SimpleNamespace:
    fields: dict[str, Any] = {
        "id": "task-a",
        "args": [WID, "a"],
        "chain": list(chain_last_first),
        "chord": None,
        "called_directly": False,
        "delivery_info": {"routing_key": "treadle.default"},
        "timelimit": (330.0, 300.0),
        "root_id": "root",
        "hostname": "default-1@h",
    }
    fields.update(more)
    return SimpleNamespace(**fields)


def test_the_next_link_on_the_same_queue_and_limits_runs_in_line() -> None:
    assert next_in_line(request(link("c"), link("b")), WID, 0.01, 1.0) == "b"


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        ({"queue": "treadle.critical"}, "another pool"),
        ({"soft_time_limit": 60.0}, "another soft limit"),
        ({"time_limit": 90.0}, "another hard limit"),
        ({"countdown": 5}, "a delay"),
        ({"eta": "2026-01-01T00:00:00"}, "a delay"),
        ({"link": [{"task": "x"}]}, "a callback"),
        ({"chord": {"task": "join"}}, "part of a chord"),
    ],
)
def test_a_link_that_differs_goes_through_the_broker(changed: dict[str, Any], why: str) -> None:
    assert next_in_line(request(link("b", **changed)), WID, 0.01, 1.0) is None, why


def test_the_budget_and_five_percent_of_the_soft_limit_bound_the_run() -> None:
    chained = request(link("b"))
    assert next_in_line(chained, WID, 0.99, 1.0) == "b"
    assert next_in_line(chained, WID, 1.0, 1.0) is None
    assert next_in_line(chained, WID, 0.0, 0.0) is None  # in line switched off
    # 5 % of a 300 s soft limit is 15 s, below a budget of 60 s.
    assert next_in_line(chained, WID, 14.9, 60.0) == "b"
    assert next_in_line(chained, WID, 15.0, 60.0) is None


def test_no_chain_a_chord_member_or_a_direct_call_never_runs_in_line() -> None:
    assert next_in_line(request(), WID, 0.0, 1.0) is None
    assert next_in_line(request(link("b"), chord={"task": "j"}), WID, 0.0, 1.0) is None
    assert next_in_line(request(link("b"), called_directly=True), WID, 0.0, 1.0) is None
    assert next_in_line(request(link("b"), delivery_info={}), WID, 0.0, 1.0) is None


def test_only_plain_steps_of_the_same_workflow_are_links() -> None:
    assert step_of_link(link("b"), WID) == "b"
    assert step_of_link(link("b"), "another") is None
    assert step_of_link({**link("b"), "subtask_type": "group"}, WID) is None
    assert step_of_link({**link("b"), "args": [WID]}, WID) is None
    assert step_of_link({**link("b"), "args": [WID, 3]}, WID) is None


def test_links_come_first_one_first() -> None:
    chained = request(link("d"), link("c"), link("b"))
    assert [step_of_link(x, WID) for x in links_in_order(chained)] == ["b", "c", "d"]
    assert links_in_order(SimpleNamespace()) == []


def test_the_in_line_request_is_the_one_its_message_would_have_had() -> None:
    carrier = request(link("c"), link("b"))
    made = request_of(link("b"), [link("c")], carrier)
    assert (made.id, made.task, made.args) == ("task-b", "treadle.noop", [WID, "b"])
    assert made.chain == [link("c")]
    assert made.parent_id == "task-a" and made.root_id == "root"
    assert made.delivery_info == carrier.delivery_info
    assert made.timelimit == (330.0, 300.0)
    assert (made.time_limit, made.soft_time_limit) == (330.0, 300.0)
    assert made.headers == {KEEP_GOING_HEADER: True}
    assert getattr(made, KEEP_GOING_HEADER) is True
    assert made.retries == 0 and made.called_directly is False
    assert request_of(link("c"), [], carrier).chain is None
