"""Write tasks with :func:`task`; a parameter named ``ctx`` receives a :class:`StepContext`."""

from orchestrator.errors import Permanent
from workers.context import StepContext
from workers.registry import task

__all__ = ["Permanent", "StepContext", "task"]
