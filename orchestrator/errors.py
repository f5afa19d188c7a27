"""One exception root; each subtree maps once to an exit code, an HTTP status and the
``error`` code of an HTTP error body (which the remote client turns back into the class)."""

from __future__ import annotations

from dataclasses import dataclass


class TreadleError(Exception):
    """Root of every error treadle raises on purpose."""

    exit_code = 1
    http_status = 500
    code = "error"


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
    http_status = 400
    code = "invalid"

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
    http_status = 429
    code = "refused"

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class NotFound(TreadleError):
    """No workflow (or dead letter) with that id."""

    exit_code = 4
    http_status = 404
    code = "not_found"


class Unreachable(TreadleError):
    """Redis or the orchestrator cannot be reached."""

    exit_code = 5
    http_status = 503
    code = "unreachable"


class WrongState(InvalidInput):
    """A well-formed request the workflow's current state does not allow (resume a running
    workflow, replay a message that was never a step)."""

    http_status = 409
    code = "wrong_state"


class TooLarge(InvalidInput):
    """A request body over the configured size limit; it was not read to the end."""

    http_status = 413
    code = "too_large"


class NotJson(InvalidInput):
    """A request body that does not say it is JSON: only JSON crosses the wire."""

    http_status = 415
    code = "not_json"


class Unauthorized(TreadleError):
    """No API token, or the wrong one. A setting to fix, so the exit code of bad input."""

    exit_code = 2
    http_status = 401
    code = "unauthorized"


class WorkflowFailed(TreadleError):
    """``--wait`` saw the workflow end in a state other than succeeded."""

    exit_code = 1


class StepError(TreadleError):
    """Raised inside a step; subclasses say whether another attempt may help."""


class Permanent(StepError):
    """A step failure that no retry can fix: the step fails at once, without more attempts."""


def error_class(code: str) -> type[TreadleError]:
    """The class whose ``code`` an HTTP error body names (the root for unknown codes)."""
    pending: list[type[TreadleError]] = [TreadleError]
    while pending:
        klass = pending.pop()
        if klass.code == code:
            return klass
        pending.extend(klass.__subclasses__())
    return TreadleError
