"""One base error, with specific subclasses that carry the facts a message needs."""

from __future__ import annotations

from pathlib import Path


class OrchestrateError(Exception):
    """Base of every error orchestrate reports to a user as ``Error: ...``."""


class TaskValidationError(OrchestrateError):
    """A task file or task mapping that breaks a rule of the task format."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        field: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.field = field
        self.line = line
        self.hint = hint
        self.problem = message
        where = source
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        text = f"{where}: {message}" if where else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class TaskNotFoundError(OrchestrateError):
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(
            f"no task '{task_id}' in tasks/pending, assigned, completed or failed "
            "(run 'orchestrate tasks' to list them)"
        )


class IllegalTransitionError(OrchestrateError):
    def __init__(self, task_id: str, action: str, state: str, allowed: tuple[str, ...]) -> None:
        self.task_id = task_id
        self.action = action
        self.state = state
        self.allowed = allowed
        super().__init__(
            f"cannot {action} task '{task_id}': it is {state}, "
            f"and {action} applies only to {' or '.join(allowed)} tasks"
        )


class TaskClashError(OrchestrateError):
    def __init__(self, task_id: str, existing: Path, new: Path | None = None) -> None:
        self.task_id = task_id
        self.existing = existing
        self.new = new
        what = str(new) if new is not None else "the new task"
        super().__init__(
            f"task id '{task_id}' is already taken by {existing}; {what} was not submitted "
            "(give it another id: ids are unique across pending, assigned, completed and failed)"
        )


class LockTimeoutError(OrchestrateError):
    def __init__(self, lock_path: Path, seconds: float) -> None:
        self.lock_path = lock_path
        super().__init__(
            f"could not take the task lock {lock_path} within {seconds:g}s; "
            "another orchestrate process holds it (is one hung? see 'orchestrate status')"
        )
