"""workers/timer_sweep.py on kombu's own event-loop timer."""

from __future__ import annotations

from kombu.asynchronous.timer import Timer

from workers.timer_sweep import sweep_cancelled


def noop() -> None:
    return None


def test_cancelled_entries_leave_the_heap_and_the_rest_keep_their_order() -> None:
    timer = Timer()
    entries = [timer.call_after(300 + i, noop) for i in range(100)]
    for entry in entries[::2]:
        entry.cancel()
    assert len(timer.queue) == 100  # kombu keeps them until they fall due
    assert sweep_cancelled(timer) == 50
    assert len(timer.queue) == 50
    assert not any(item.entry.canceled for item in timer.queue)
    queue = timer._queue
    assert all(
        queue[parent].eta <= queue[child].eta
        for parent in range(len(queue))
        for child in (2 * parent + 1, 2 * parent + 2)
        if child < len(queue)
    )  # still a heap: the timer pops the earliest first
    assert [item.entry for item in sorted(queue)] == entries[1::2]


def test_nothing_to_sweep_leaves_the_timer_alone() -> None:
    timer = Timer()
    kept = timer.call_after(10, noop)
    queue = timer._queue
    assert sweep_cancelled(timer) == 0
    assert timer._queue is queue and [item.entry for item in queue] == [kept]
