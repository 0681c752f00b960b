"""Shared helpers for the coordinator's tests: real repositories, real agent scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import load_config
from orchestrator.daemon import Daemon
from orchestrator.repo import init_repo

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "user@example.com",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "user@example.com",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def git(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(IDENTITY)
    return subprocess.run(
        ["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def orchestrate(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The ``orchestrate`` command, run as a user runs it, in ``root``."""
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "-C", str(root), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "# Project\n\nline two\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    init_repo(path)
    return path


def write_agent(path: Path, *parts: str) -> list[str]:
    """A fake agent: a real Python program run by the same runner as real agents.
    Each part is dedented on its own, so indented snippets can be joined."""
    script = path / "agent.py"
    script.write_text(
        "import os, sys, time, pathlib, subprocess, signal\n"
        "task = os.environ['ORCHESTRATE_TASK_ID']\n"
        "prompt = pathlib.Path(os.environ['ORCHESTRATE_PROMPT_FILE']).read_text()\n"
        + "".join(textwrap.dedent(part) for part in parts)
    )
    return [sys.executable, str(script)]


def configure(root: Path, agents: dict[str, dict[str, Any]], **sections: Any) -> None:
    data: dict[str, Any] = {
        "agents": agents,
        "merge": {"target": "orchestrate/integration", "mode": "auto"},
        "defaults": {"retry_delay_seconds": 0.05, "kill_grace_seconds": 1, "max_retries": 0},
        "limits": {"rescan_seconds": 0.5},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    (root / "orchestrate.yaml").write_text(yaml.safe_dump(data))


def add_task(root: Path, task_id: str, description: str, **fields: Any) -> None:
    data = {"id": task_id, "description": description, **fields}
    tmp = root / "tasks" / ".tmp" / f"{task_id}.yaml.part"
    tmp.write_text(yaml.safe_dump(data))
    os.rename(tmp, root / "tasks" / "pending" / f"{task_id}.yaml")


def run_until_idle(root: Path) -> int:
    return Daemon(root, load_config(root), echo=None, install_signals=False).run(until_idle=True)


def load(root: Path, task_id: str) -> tuple[str, dict[str, Any]]:
    for state in ("pending", "assigned", "completed", "failed"):
        path = root / "tasks" / state / f"{task_id}.yaml"
        if path.exists():
            return state, yaml.safe_load(path.read_text())
    raise AssertionError(f"task {task_id} is nowhere")


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
