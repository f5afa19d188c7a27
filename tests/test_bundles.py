"""Bundles (orchestrator/bundles.py): how many steps share a message, and how a stage is
cut into bundles."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.bundles import BUNDLE_KWARG, members, others_in, size_of, split


def test_a_task_never_measured_or_a_lone_step_goes_alone() -> None:
    assert size_of(100, None, 0.05, 32) == 1
    assert size_of(1, 0.0001, 0.05, 32) == 1
    assert size_of(100, 0.0001, 0.0, 32) == 1  # bundling turned off
    assert size_of(100, 0.0001, 0.05, 1) == 1


def test_as_many_as_fit_in_the_target_at_most_the_cap_and_the_stage() -> None:
    assert size_of(100, 0.005, 0.05, 32) == 10
    assert size_of(100, 0.0001, 0.05, 32) == 32
    assert size_of(5, 0.0001, 0.05, 32) == 5
    assert size_of(100, 0.2, 0.05, 32) == 1  # slower than the target: alone
    assert size_of(100, 0.0, 0.05, 32) == 32  # measured as nothing: the clock's resolution


@given(
    width=st.integers(0, 5000),
    mean=st.none() | st.floats(0, 100, allow_nan=False),
    target=st.floats(0, 10, allow_nan=False),
    most=st.integers(1, 100),
)
def test_a_size_is_within_its_bounds(
    width: int, mean: float | None, target: float, most: int
) -> None:
    size = size_of(width, mean, target, most)
    assert 1 <= size <= max(1, min(most, width))
    if mean is not None and mean > 0 and size > 1:
        assert size * mean <= target * (1 + 1e-9)


@given(n=st.integers(0, 500), size=st.integers(-1, 60))
def test_a_split_keeps_order_and_evens_out(n: int, size: int) -> None:
    ids = [f"s{i}" for i in range(n)]
    runs = split(ids, size)
    assert [s for run in runs for s in run] == ids
    if not ids:
        assert runs == []
        return
    cap = max(size, 1)
    assert all(1 <= len(run) <= cap for run in runs)
    assert len(runs) == -(-n // cap)  # the fewest that fit
    assert max(map(len, runs)) - min(map(len, runs)) <= 1


def test_a_messages_steps_are_read_from_its_arguments() -> None:
    assert members(["wf", "a"], {}) == ["a"]
    assert members(["wf", "a"], {BUNDLE_KWARG: ["b", "c"]}) == ["a", "b", "c"]
    assert members(["wf", "a", 3], {}) == []  # a fan-out's join
    assert members(None, None) == []
    assert others_in({}) is None
    assert others_in({BUNDLE_KWARG: []}) is None
    assert others_in({BUNDLE_KWARG: ["b", 2]}) is None
    assert others_in({BUNDLE_KWARG: ["b"], "more": 1}) is None
    assert others_in({BUNDLE_KWARG: ["b"]}) == ["b"]
