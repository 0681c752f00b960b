"""What ``status``, ``tasks``, ``agents`` and ``show`` report.

Imported by the fastest commands, so it imports neither git nor watchdog;
``status`` reads directory entries, the small daemon state file and the
assigned tasks (at most one per agent slot), never the whole task tree.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.scheduler import (
    FAILED,
    MERGED,
    RUNNING,
    UNMERGED,
    AgentState,
    DependencyState,
    plan,
)
from protocol.store import STATES, State, TaskStore
from protocol.task import Task, parse_iso

RUNTIME_DIR = Path(".orchestrate")
PID_FILE = RUNTIME_DIR / "daemon.pid"
LOCK_FILE = RUNTIME_DIR / "daemon.lock"
STATE_FILE = RUNTIME_DIR / "state.json"
MERGED_STATES = ("merged", "no_changes")


def read_pid(root: Path) -> int | None:
    """The pid of the running daemon, or None. A pid file left by a killed daemon is
    ignored: the daemon holds a lock for its whole life, and the kernel drops it."""
    try:
        pid = int((Path(root) / PID_FILE).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    # the daemon's filelock is an flock(2); probing it directly spares ``status`` the
    # import of filelock (and of logging, which it pulls in)
    try:
        fd = os.open(Path(root) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return pid
    finally:
        os.close(fd)  # closing releases a lock taken here
    return None


def read_daemon_state(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(root) / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def agent_rows(root: Path, config: Config, store: TaskStore, now: float) -> list[dict[str, Any]]:
    by_slot: dict[str, Task] = {}
    for _, assigned in store.iter_tasks(("assigned",)):
        if assigned.assignment is not None:
            by_slot[assigned.assignment.agent_id] = assigned
    state = read_daemon_state(root)
    cooling = state.get("cooling", {})
    rows = []
    for slot, agent_type in config.slots():
        task = by_slot.get(slot)
        started = task.assignment.started_at if task and task.assignment else None
        until = cooling.get(agent_type)
        rows.append(
            {
                "agent": slot,
                "type": agent_type,
                "state": "busy" if task else "free",
                "task": task.id if task else None,
                "elapsed_seconds": round(now - parse_iso(started), 1) if started else None,
                "cooling_until": until if until and until > now else None,
            }
        )
    return rows


def status_report(root: Path, config: Config) -> dict[str, Any]:
    store = TaskStore(root)
    now = time.time()
    state = read_daemon_state(root)
    cooling = {k: v for k, v in state.get("cooling", {}).items() if v > now}
    return {
        "counts": dict(store.counts()),
        "rejected_files": len(store.rejected()),
        "daemon_pid": read_pid(root),
        "target": config.merge.target,
        "agents": agent_rows(root, config, store, now),
        "cooling": cooling,
        "cost_usd": state.get("cost_usd", {}),
        "tokens": state.get("tokens", {}),
        "max_cost_usd": config.limits.max_cost_usd,
    }


def _dependency_state(task: Task, state: State) -> DependencyState:
    if state in ("pending", "assigned"):
        return DependencyState(RUNNING)
    if state == "failed":
        return DependencyState(FAILED)
    merge = task.result.merge if task.result else None
    if merge is not None and merge.status in MERGED_STATES:
        return DependencyState(MERGED)
    return DependencyState(UNMERGED, merge.message if merge and merge.message else "not merged")


def task_rows(
    root: Path, config: Config, states: tuple[State, ...] = STATES
) -> list[dict[str, Any]]:
    """One row per task, with why each pending task waits (the daemon's own rules)."""
    store = TaskStore(root)
    all_tasks = list(store.iter_tasks(STATES))
    pending = [t for s, t in all_tasks if s == "pending"]
    others: dict[str, DependencyState] = {
        t.id: _dependency_state(t, s) for s, t in all_tasks if s != "pending"
    }
    agents = {
        name: AgentState(name=name, max_instances=a.max_instances, fallback=a.fallback_agent)
        for name, a in config.agents.items()
    }
    for s, t in all_tasks:
        if s == "assigned" and t.assignment is not None and t.assignment.agent_type in agents:
            agents[t.assignment.agent_type].busy += 1
    decided = plan(
        now=time.time(),
        pending=pending,
        others=others,
        agents=agents,
        aging_seconds=config.defaults.aging_minutes * 60,
    )
    starting = {tid for tid, _ in decided.starts}
    rows = []
    for s, t in all_tasks:
        if s not in states:
            continue
        merge = t.result.merge if t.result else None
        waiting = None
        if s == "pending":
            waiting = decided.waiting.get(t.id) or decided.rejected.get(t.id)
            if waiting is None and t.id in starting:
                waiting = "ready: starts when the daemon next looks"
        rows.append(
            {
                "id": t.id,
                "state": s,
                "priority": t.priority,
                "agent": (t.assignment.agent_id if t.assignment else None)
                or (t.result.agent_id if t.result else None)
                or t.agent,
                "branch": t.result.branch
                if t.result
                else (t.assignment.branch if t.assignment else None),
                "merge_status": merge.status if merge else None,
                "conflicts": merge.conflicts if merge else [],
                "waiting_on": waiting,
                "attempts": len(t.attempts),
                "error": t.result.error if t.result else None,
                "description": t.title,
            }
        )
    for rejected in store.rejected() if "failed" in states else []:
        rows.append(
            {
                "id": rejected.name,
                "state": "failed",
                "priority": None,
                "agent": None,
                "branch": None,
                "merge_status": None,
                "conflicts": [],
                "waiting_on": None,
                "attempts": 0,
                "error": rejected.message.strip().splitlines()[0],
                "description": "(rejected input file)",
            }
        )
    return rows
