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


def chain_problems(entries: Sequence[str], tail: str) -> list[str]:
    """Where a stored chain was changed, reordered or cut; empty when it is intact."""
    problems: list[str] = []
    prev = GENESIS
    for i, text in enumerate(entries):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            problems.append(f"record {i}: not JSON")
            prev = hashlib.sha256(text.encode()).hexdigest()
            continue
        if record.get("prev") != prev:
            problems.append(f"record {i}: does not follow record {i - 1} (changed or removed)")
        if canonical_json(record) != text:
            problems.append(f"record {i}: not in canonical form (edited)")
        prev = hashlib.sha256(text.encode()).hexdigest()
    if prev != tail:
        problems.append("the last record is not the one the workflow points to (cut or edited)")
    return problems
