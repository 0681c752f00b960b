"""Helpers for the tests of the protocol package."""

from __future__ import annotations

import os
from pathlib import Path

from protocol.store import STATES, TaskStore
from protocol.task import Assignment, parse_task_bytes

T0 = 1_800_000_000.0  # a fixed "now" for intake, far from any file's real mtime
STAMP = "2027-01-15T08:00:00.000000Z"


def assignment(attempt: int = 1, agent_id: str = "claude-1") -> Assignment:
    return Assignment(
        agent_id=agent_id,
        agent_type="claude",
        worktree=".orchestrate/worktrees/claude-1",
        branch="orchestrate/t",
        host="host",
        attempt=attempt,
        assigned_at=STAMP,
    )


def drop(store: TaskStore, name: str, data: bytes, *, mtime: float = T0 - 60) -> Path:
    """Put bytes into tasks/pending the way a user or a script would, settled long ago."""
    path = store.dir("pending") / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def state_of_every_file(store: TaskStore) -> dict[str, str]:
    """task id -> state, failing if an id is in two states or a file does not parse."""
    where: dict[str, str] = {}
    for state in STATES:
        for task_id in store.ids(state):
            assert task_id not in where, f"{task_id} is in {where[task_id]} and {state}"
            where[task_id] = state
            path = store.dir(state) / f"{task_id}.yaml"
            parsed = parse_task_bytes(path.read_bytes(), source=str(path), default_id=task_id)
            assert parsed.task.id == task_id
    return where


def tmp_leftovers(store: TaskStore) -> list[str]:
    return sorted(os.listdir(store.tmp_dir))
