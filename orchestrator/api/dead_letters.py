"""``/dead-letters``: the dead-letter queue, as ``treadle dlq`` works it."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import OrchestratorDep
from orchestrator.api.errors import documented
from orchestrator.api.models import DeadLetter, Purged, Replayed, ReplayedAll
from orchestrator.dead_letters import DeadLetters

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])

_COMMON = (400, 401, 413, 415, 503)
# A step's dead letter id is workflow/step/attempt: slashes belong to it.
_ID_PATH = "/{letter_id:path}"


@router.get("", summary="Dead letters, newest first", responses=documented(*_COMMON))
def list_dead_letters(orchestrator: OrchestratorDep) -> list[DeadLetter]:
    return [DeadLetter.model_validate(e) for e in DeadLetters(orchestrator.store).entries()]


@router.delete("", summary="Delete every dead letter", responses=documented(*_COMMON))
def purge(orchestrator: OrchestratorDep) -> Purged:
    return Purged(purged=DeadLetters(orchestrator.store).purge())


@router.post(
    "/replay",
    summary="Replay every step dead letter: their workflows go on",
    responses=documented(*_COMMON, 409),
)
def replay_all(orchestrator: OrchestratorDep) -> ReplayedAll:
    return ReplayedAll(workflows=orchestrator.replay_all())


@router.get(
    _ID_PATH,
    summary="One dead letter, whole (with its traceback)",
    responses=documented(*_COMMON, 404),
)
def show(orchestrator: OrchestratorDep, letter_id: str) -> DeadLetter:
    return DeadLetter.model_validate(DeadLetters(orchestrator.store).get(letter_id))


@router.post(
    _ID_PATH + "/replay",
    summary="Re-queue a dead-lettered step; its workflow goes on",
    responses=documented(*_COMMON, 404, 409),
)
def replay(orchestrator: OrchestratorDep, letter_id: str) -> Replayed:
    return Replayed(id=letter_id, workflow_id=orchestrator.replay(letter_id).workflow_id)
