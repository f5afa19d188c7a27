"""Sample task modules and workflow specs, one per scenario of the design notes."""

from __future__ import annotations

from pathlib import Path

WORKFLOWS_DIR = Path(__file__).with_name("workflows")


def workflow_files() -> list[Path]:
    """Every sample workflow spec, YAML and JSON, in name order."""
    return sorted(p for p in WORKFLOWS_DIR.iterdir() if p.suffix in (".yaml", ".json"))
