"""Step definitions a process has read, kept for its next steps of the same workflow.

A definition is written once, when its step is created, and never changed, so a worker
need not read it again for every step: the second time a process runs a step of a
workflow it reads all of that workflow's definitions in one command and keeps them. A
stage of 2,000 parallel steps then costs each worker process one read of definitions
instead of one per step (``StateStore.load_step``). What is kept is told apart by the
workflow's submission number as well as its id, so a workflow forgotten and submitted
again under the same id is never run from the old definitions.

Bounded by bytes (``MAX_BYTES``, about one big stage): the workflows seen longest ago are
dropped first. A workflow too big to keep, or dropped once, is read one step at a time
from then on, so that several big workflows running at once cannot make a process read
them whole over and over.

Pure: no I/O (the store reads; this keeps).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

MAX_BYTES = 1 << 20
ENTRY_OVERHEAD = 100  # bytes a kept definition costs besides its text (key, dict slot)
_REMEMBERED = 1024  # workflows remembered as seen once, or as read one by one


class DefinitionCache:
    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        # workflow id -> (its generation, step id -> definition as stored, its fields)
        self._kept: OrderedDict[str, tuple[Hashable, dict[str, bytes], dict[str, Any]]] = (
            OrderedDict()
        )
        self._bytes: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()  # read one step so far
        self._one_by_one: OrderedDict[str, None] = OrderedDict()  # never read whole
        self.size = 0  # bytes kept, as estimated

    def get(self, workflow_id: str, generation: Hashable | None, step_id: str) -> bytes | None:
        """The kept definition; ``generation`` None: whichever is kept (the caller checks
        it against the one it reads)."""
        kept = self._kept.get(workflow_id)
        if kept is None or (generation is not None and kept[0] != generation):
            return None
        self._kept.move_to_end(workflow_id)
        return kept[1].get(step_id)

    def generation_of(self, workflow_id: str) -> Hashable | None:
        kept = self._kept.get(workflow_id)
        return None if kept is None else kept[0]

    def fields_of(self, workflow_id: str) -> Mapping[str, Any] | None:
        """The workflow's fields kept with its definitions (as ``keep_all`` was given)."""
        kept = self._kept.get(workflow_id)
        return None if kept is None else kept[2]

    def wants_all(self, workflow_id: str) -> bool:
        """Whether to read all of the workflow's definitions now: the second time one of
        its steps runs here, unless it is kept already or is read one by one."""
        if workflow_id in self._kept or workflow_id in self._one_by_one:
            return False
        if workflow_id in self._seen:
            return True
        _remember(self._seen, workflow_id)
        return False

    def keep_all(
        self,
        workflow_id: str,
        generation: Hashable,
        definitions: Mapping[bytes, bytes],
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep every definition of the workflow (as HGETALL gives them), and its fields."""
        self.forget(workflow_id)
        self._seen.pop(workflow_id, None)
        size = sum(len(v) + ENTRY_OVERHEAD for v in definitions.values())
        if size > self.max_bytes:
            _remember(self._one_by_one, workflow_id)
            return
        self._kept[workflow_id] = (
            generation,
            {k.decode(): v for k, v in definitions.items()},
            dict(fields or {}),
        )
        self._bytes[workflow_id] = size
        self.size += size
        while self.size > self.max_bytes:
            dropped, _ = self._kept.popitem(last=False)
            self.size -= self._bytes.pop(dropped)
            _remember(self._one_by_one, dropped)

    def keep_one(
        self, workflow_id: str, generation: Hashable, step_id: str, definition: bytes
    ) -> None:
        """Add a definition created after the rest were kept (a fan-out's item)."""
        kept = self._kept.get(workflow_id)
        if kept is None or kept[0] != generation or step_id in kept[1]:
            return
        if self.size + len(definition) + ENTRY_OVERHEAD > self.max_bytes:
            return  # read one by one instead
        kept[1][step_id] = definition
        self._bytes[workflow_id] += len(definition) + ENTRY_OVERHEAD
        self.size += len(definition) + ENTRY_OVERHEAD

    def forget(self, workflow_id: str) -> None:
        if self._kept.pop(workflow_id, None) is not None:
            self.size -= self._bytes.pop(workflow_id)


def _remember(ids: OrderedDict[str, None], workflow_id: str) -> None:
    ids[workflow_id] = None
    ids.move_to_end(workflow_id)
    if len(ids) > _REMEMBERED:
        ids.popitem(last=False)
