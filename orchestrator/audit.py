"""Audit records: how a transition is written down, hashed and chained. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

GENESIS = ""


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: what checksums and chain hashes are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def seal(record: Mapping[str, Any], prev: str) -> tuple[str, str]:
    """The stored text of ``record`` chained after ``prev``, and that text's hash."""
    text = canonical_json({**record, "prev": prev})
    return text, hashlib.sha256(text.encode()).hexdigest()


# The chain a record belongs to: its step's, or (no step) the workflow's own.
WORKFLOW_CHAIN = ""


def chain_of(record: Mapping[str, Any]) -> str:
    return str(record.get("step_id") or WORKFLOW_CHAIN)


def ends_digest(tails: Mapping[str, str]) -> str:
    """One hash for the ends of all of a workflow's chains (``Treadle-Audit-Tail``)."""
    return sha256_of({chain: tail for chain, tail in tails.items() if tail})


def chain_problems(entries: Sequence[str], tails: Mapping[str, str] | str) -> list[str]:
    """Where a stored trail was changed, reordered within a chain or cut; empty when it
    is intact. ``tails``: where each chain ends by the store (step id, or ``""`` for the
    workflow's own records), or the ``ends_digest`` of that.

    Each step's records form a chain of their own, and the workflow's own records
    another, so that transitions of different steps never contend for one tail; the
    order between steps that matters (a step starts after its dependencies end) is
    sealed by the start record, which names the end of each dependency's chain.
    """
    problems: list[str] = []
    ends: dict[str, str] = {}
    for i, text in enumerate(entries):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            problems.append(f"record {i}: not JSON")
            continue
        chain = chain_of(record)
        if record.get("prev") != ends.get(chain, GENESIS):
            problems.append(f"record {i}: does not follow the record before it in {_name(chain)}")
        if canonical_json(record) != text:
            problems.append(f"record {i}: not in canonical form (edited)")
        ends[chain] = hashlib.sha256(text.encode()).hexdigest()
    if isinstance(tails, str):
        if ends_digest(ends) != tails:
            problems.append("the chains do not end where the workflow points to (cut or edited)")
        return problems
    for chain in sorted(set(ends) | {c for c, t in tails.items() if t}):
        if ends.get(chain, GENESIS) != tails.get(chain, GENESIS):
            problems.append(
                f"the last record of {_name(chain)} is not the one it points to (cut or edited)"
            )
    return problems


def _name(chain: str) -> str:
    return f"step {chain}" if chain else "the workflow's own records"
