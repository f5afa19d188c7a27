"""Step definitions a process has read, kept for its next steps of the same workflow.

A definition is written once, when its step is created, and never changed, so a worker
need not read it again for every step: the second time a process runs a step of a
workflow it reads all of that workflow's definitions in one command and keeps them. A
stage of 2,000 parallel steps then costs each worker process one read of definitions
instead of one per step (``StateStore.load_step``). What is kept is told apart by the
workflow's submission number as well as its id, so a workflow forgotten and submitted
again under the same id is never run from the old definitions. Bounded: past
``max_definitions`` the workflows seen longest ago are dropped.

Pure: no I/O (the store reads; this keeps).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

MAX_DEFINITIONS = 50_000


class DefinitionCache:
    def __init__(self, max_definitions: int = MAX_DEFINITIONS):
        self.max_definitions = max_definitions
        # workflow id -> (its submission number, step id -> definition as stored)
        self._kept: OrderedDict[str, tuple[int, dict[str, bytes]]] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()  # read one by one so far
        self._size = 0

    def get(self, workflow_id: str, sequence: int | None, step_id: str) -> bytes | None:
        """The kept definition; ``sequence`` None: whichever submission is kept (the
        caller checks it against the one it reads)."""
        kept = self._kept.get(workflow_id)
        if kept is None or (sequence is not None and kept[0] != sequence):
            return None
        self._kept.move_to_end(workflow_id)
        return kept[1].get(step_id)

    def sequence_of(self, workflow_id: str) -> int | None:
        kept = self._kept.get(workflow_id)
        return None if kept is None else kept[0]

    def wants_all(self, workflow_id: str) -> bool:
        """Whether to read all of the workflow's definitions now: the second time one of
        its steps runs here (a workflow of one step per process is read one by one)."""
        if workflow_id in self._kept:
            return False
        if workflow_id in self._seen:
            return True
        self._seen[workflow_id] = None
        if len(self._seen) > 1024:
            self._seen.popitem(last=False)
        return False

    def keep_all(self, workflow_id: str, sequence: int, definitions: Mapping[bytes, bytes]) -> None:
        """Keep every definition of the workflow (as HGETALL gives them)."""
        self.forget(workflow_id)
        self._seen.pop(workflow_id, None)
        if len(definitions) > self.max_definitions // 2:
            return  # too big to be worth keeping: read one by one
        kept = {key.decode(): value for key, value in definitions.items()}
        self._kept[workflow_id] = (sequence, kept)
        self._size += len(kept)
        while self._size > self.max_definitions and self._kept:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._size -= len(dropped)

    def keep_one(self, workflow_id: str, sequence: int, step_id: str, definition: bytes) -> None:
        """Add a definition created after the rest were kept (a fan-out's item)."""
        kept = self._kept.get(workflow_id)
        if kept is not None and kept[0] == sequence and step_id not in kept[1]:
            kept[1][step_id] = definition
            self._size += 1

    def forget(self, workflow_id: str) -> None:
        kept = self._kept.pop(workflow_id, None)
        if kept is not None:
            self._size -= len(kept[1])
