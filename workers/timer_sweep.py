"""Drop cancelled entries from the worker's timer, so time limits cost no memory.

The prefork pool arms a timer for each task's soft and hard time limit when a child
accepts it, and cancels both when the task ends. kombu's timer only flags a cancelled
entry; it stays in the heap until its due time (celery#1129, celery#5200). treadle gives
every step a time limit (300 s by default), so a worker running a few hundred steps a
second holds every step of the last five minutes in its heap: about 600 bytes each,
tens of megabytes that look like a leak until the first ones fall due. Nothing in
Celery or kombu prunes them, hence this sweep, in the event loop's own thread.
"""

from __future__ import annotations

import heapq
from typing import Any

from celery import Celery, bootsteps

SWEEP_EVERY_S = 10.0


def sweep_cancelled(timer: Any) -> int:
    """Remove the cancelled entries of a kombu ``Timer``; returns how many went."""
    queue = timer._queue
    kept = [item for item in queue if not item.entry.canceled]
    removed = len(queue) - len(kept)
    if removed:
        heapq.heapify(kept)
        queue[:] = kept  # in place: the timer and its iterator hold this list
    return removed


def install_timer_sweep(app: Celery) -> None:
    app.steps["worker"].add(TimerSweep)


class TimerSweep(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        timer = worker.timer
        if hasattr(timer, "_queue"):  # kombu's event-loop timer (prefork), not timer2
            self.tref = timer.call_repeatedly(SWEEP_EVERY_S, sweep_cancelled, (timer,))

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
