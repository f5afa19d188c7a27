"""One exception root; each subtree maps once to an exit code (and, later, an HTTP status)."""

from __future__ import annotations

from dataclasses import dataclass


class TreadleError(Exception):
    """Root of every error treadle raises on purpose."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is and what is wrong."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


class InvalidInput(TreadleError):
    """A spec, argument or request is wrong; nothing was enqueued or written."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(f"{prefix}{problem}" for problem in self.problems)


class Refused(TreadleError):
    """Backpressure: the class is over its watermark; retry after ``retry_after_s``."""

    exit_code = 3

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class NotFound(TreadleError):
    """No workflow (or dead letter) with that id."""

    exit_code = 4


class Unreachable(TreadleError):
    """Redis or the orchestrator cannot be reached."""

    exit_code = 5


class WorkflowFailed(TreadleError):
    """``--wait`` saw the workflow end in a state other than succeeded."""

    exit_code = 1


class StepError(TreadleError):
    """Raised inside a step; subclasses say whether another attempt may help."""


class Permanent(StepError):
    """A step failure that no retry can fix: the step fails at once, without more attempts."""
