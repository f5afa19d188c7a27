"""Pure parts of flow control: which limits a step takes, concurrency-key templates, the
order of waiters, retry-after and backoff, and what the audit trail says about overlap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.topology import Topology
from orchestrator.admission import MAX_RETRY_AFTER_S, MIN_RETRY_AFTER_S, retry_after_s
from orchestrator.client import backoff_s
from orchestrator.limits import (
    ORDER_STRIDE,
    KeyTemplateError,
    Limit,
    limits_for,
    needs_item,
    order_score,
    render_key,
    template_fields,
)
from orchestrator.occupancy import Run, max_overlap, max_starts_per_window, runs

TOPOLOGY = Topology.model_validate(
    {
        "pools": {"default": {"concurrency": 4, "tenant_limit": 2}},
        "resources": {
            "api": {"rate": "120/m", "burst": 3},
            "db": {"concurrency": 8},
            "pay": {"circuit": {"failures": 5, "open_s": 30}},
        },
    }
)


def test_a_step_takes_its_resources_then_its_key_then_its_tenant_share() -> None:
    definition = {
        "resources": ["api", "db", "pay", "api"],
        "concurrency_key": "sku-{params.sku}",
        "args": {},
    }
    limits = limits_for(TOPOLOGY, definition, {"sku": "A-1"}, "default", "shop-eu")
    assert limits == [
        Limit("resource", "api", rate_per_s=2.0, burst=3),
        Limit("resource", "db", concurrency=8),
        Limit("resource", "pay", circuit_failures=5, circuit_open_s=30.0),
        Limit("key", "sku-A-1", concurrency=1, ordered=True),
        Limit("tenant", "default:shop-eu", concurrency=2),
    ]
    # No tenant, or a pool without a cap: no tenant share.
    assert limits_for(TOPOLOGY, {"resources": ["db"]}, {}, "bulk", "t") == [limits[1]]
    assert limits_for(TOPOLOGY, {"resources": ["db"]}, {}, "default", "") == [limits[1]]


def test_a_resource_removed_from_the_topology_limits_nothing() -> None:
    assert limits_for(TOPOLOGY, {"resources": ["gone"]}, {}, "default", "") == []


def test_key_templates_read_params_args_and_items() -> None:
    params = {"order": {"sku": "A-1", "qty": 2}, "region": "eu"}
    assert render_key("{params.order.sku}/{params.region}", params, {}) == "A-1/eu"
    assert render_key("{args.n}", {}, {"n": 3}) == "3"
    assert render_key("{params.order}", params, {}) == '{"qty":2,"sku":"A-1"}'
    assert render_key("x-{item.id}", {}, {}, {"id": 7}, has_item=True) == "x-7"
    assert needs_item("x-{item}") and not needs_item("{params.a}")
    assert template_fields("{ params.a }-{item}") == [("params", "a"), ("item",)]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("fixed", "reads nothing"),
        ("{params.a", "unbalanced"),
        ("{secrets.a}", "is not params"),
        ("{params.}", "is not params"),
        ("{params.missing}", "no params.missing"),
        ("{item}", "only a for_each step"),
    ],
)
def test_a_key_template_that_cannot_be_filled_says_why(template: str, problem: str) -> None:
    with pytest.raises(KeyTemplateError, match=problem):
        render_key(template, {"a": 1}, {})


@given(
    st.tuples(st.integers(0, 10**9), st.integers(0, ORDER_STRIDE - 1)),
    st.tuples(st.integers(0, 10**9), st.integers(0, ORDER_STRIDE - 1)),
)
def test_waiters_of_a_key_are_ordered_by_submission_then_by_rank(
    a: tuple[int, int], b: tuple[int, int]
) -> None:
    assert (order_score(*a) < order_score(*b)) == (a < b)
    assert float(order_score(*a)) == order_score(*a)  # exact as a Redis score


@given(st.integers(0, 10**6), st.floats(0, 1e4, allow_nan=False))
def test_retry_after_is_whole_seconds_within_bounds(excess: int, rate: float) -> None:
    wait = retry_after_s(excess, rate)
    assert isinstance(wait, int) and MIN_RETRY_AFTER_S <= wait <= MAX_RETRY_AFTER_S


def test_retry_after_follows_the_rate_at_which_the_class_finishes() -> None:
    assert retry_after_s(100, 10.0) == 10
    assert retry_after_s(100, 50.0) == 2


@given(st.floats(1, 300), st.integers(0, 20), st.floats(0, 1))
def test_a_refused_client_backs_off_at_least_as_asked_and_more_when_refused_again(
    asked: float, tries: int, fraction: float
) -> None:
    wait = backoff_s(asked, tries, fraction)
    assert asked <= wait <= asked * 8 * 1.5
    assert backoff_s(asked, tries + 1, fraction) >= wait


def record(step: str, at: float, to: str, **extra: object) -> dict[str, object]:
    return {"workflow_id": "w", "step_id": step, "at": at, "to": to, **extra}


def test_attempts_are_read_from_the_trail_including_lost_ones() -> None:
    trail = [
        record("a", 1.0, "running"),
        record("b", 1.5, "running"),
        record("a", 2.0, "running", lost=True),  # its worker died: the attempt ended
        record("c", 2.5, "running"),
        record("a", 3.0, "running", note="previous attempt lost"),
        record("b", 3.5, "succeeded"),
        record("a", 4.0, "succeeded"),
    ]
    found = runs(trail)
    assert sorted((r.step_id, r.start, r.end) for r in found) == [
        ("a", 1.0, 2.0),
        ("a", 3.0, 4.0),
        ("b", 1.5, 3.5),
        ("c", 2.5, None),
    ]
    assert max_overlap(found) == 3


def test_an_end_and_a_start_at_the_same_moment_do_not_overlap() -> None:
    assert max_overlap([Run("w", "a", 0.0, 1.0), Run("w", "b", 1.0, 2.0)]) == 1


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=60))
def test_starts_per_window_matches_counting_every_window(starts: list[float]) -> None:
    expected = max((sum(s <= x < s + 1.0 for x in starts) for s in starts), default=0)
    assert max_starts_per_window(starts) == expected
