"""The per-process cache of step definitions (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.definitions import ENTRY_OVERHEAD, DefinitionCache


def defs(n: int, prefix: str = "s") -> dict[bytes, bytes]:
    return {f"{prefix}{i}".encode(): f'{{"id":"{prefix}{i}"}}'.encode() for i in range(n)}


def test_a_workflow_is_read_whole_the_second_time_one_of_its_steps_runs() -> None:
    cache = DefinitionCache()
    assert not cache.wants_all("wf")  # the first: read one by one
    assert cache.wants_all("wf")
    cache.keep_all("wf", 7, defs(3))
    assert not cache.wants_all("wf")
    assert cache.get("wf", 7, "s1") == b'{"id":"s1"}'
    assert cache.get("wf", None, "s2") == b'{"id":"s2"}'
    assert cache.generation_of("wf") == 7


def test_another_submission_under_the_same_id_is_not_served_the_old_definitions() -> None:
    cache = DefinitionCache()
    cache.keep_all("wf", 7, defs(3))
    assert cache.get("wf", 8, "s1") is None
    cache.forget("wf")
    assert cache.get("wf", None, "s1") is None
    assert cache.generation_of("wf") is None


def test_a_step_created_later_is_added_to_its_own_submission_only() -> None:
    cache = DefinitionCache()
    cache.keep_all("wf", 7, defs(2))
    assert cache.get("wf", 7, "item-0") is None
    cache.keep_one("wf", 7, "item-0", b"{}")
    cache.keep_one("wf", 8, "item-1", b"{}")  # another submission: not added
    assert cache.get("wf", 7, "item-0") == b"{}"
    assert cache.get("wf", 7, "item-1") is None


def test_a_workflow_too_big_to_keep_is_read_one_by_one_from_then_on() -> None:
    cache = DefinitionCache(max_bytes=(ENTRY_OVERHEAD + 20) * 5)
    assert not cache.wants_all("big")
    assert cache.wants_all("big")
    cache.keep_all("big", 1, defs(6))
    assert cache.get("big", 1, "s0") is None
    # Never read whole again: that would be a whole read per step.
    assert not any(cache.wants_all("big") for _ in range(3))


def test_a_dropped_workflow_is_not_read_whole_again() -> None:
    cache = DefinitionCache(max_bytes=(ENTRY_OVERHEAD + 20) * 4)
    cache.keep_all("a", 1, defs(3))
    cache.keep_all("b", 2, defs(3))  # no room for both: "a", seen longest ago, goes
    assert cache.get("a", 1, "s0") is None
    assert cache.get("b", 2, "s0") == b'{"id":"s0"}'
    assert not any(cache.wants_all("a") for _ in range(3))


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=40))
def test_the_cache_never_holds_more_than_its_bound(sizes: list[int]) -> None:
    bound = (ENTRY_OVERHEAD + 20) * 10
    cache = DefinitionCache(max_bytes=bound)
    for i, n in enumerate(sizes):
        cache.keep_all(f"wf{i % 7}", i, defs(n))
        kept = sum(len(v) + ENTRY_OVERHEAD for _, d, _ in cache._kept.values() for v in d.values())
        assert kept == cache.size <= bound
    last = len(sizes) - 1
    if sizes[last]:
        # The newest always fits (at most half the bound), so it is kept.
        assert cache.get(f"wf{last % 7}", last, "s0") == b'{"id":"s0"}'
