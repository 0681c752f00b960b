"""What ``status``, ``tasks``, ``agents`` and ``show`` report.

Imported by the fastest commands, so it imports neither git nor watchdog;
``status`` counts directory entries and reads the small daemon state file and
the assigned tasks (at most one per agent slot), never the whole task tree.
Files and directories are read through the cache (orchestrator/cache.py): one
unchanged since the last command is not parsed or listed again, and once all
are in the cache, PyYAML is not even imported.
"""

from __future__ import annotations

import fcntl
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cache import Shelf
from orchestrator.config import Config
from protocol.errors import TaskValidationError
from protocol.store import STATES, State, TaskStore
from protocol.task import Task, parse_iso, task_from_mapping

if TYPE_CHECKING:
    from orchestrator.scheduler import DependencyState

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
        text = (Path(root) / STATE_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    import json  # the file exists once an agent reported a cost or a usage limit

    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def agent_rows(root: Path, config: Config, store: TaskStore, now: float) -> list[dict[str, Any]]:
    by_slot: dict[str, dict[str, Any]] = {}
    for _, summary in _task_summaries(root, store, ("assigned",)):
        if summary["slot"] is not None:
            by_slot[summary["slot"][0]] = summary
    state = read_daemon_state(root)
    cooling = state.get("cooling", {})
    rows = []
    for slot, agent_type in config.slots():
        task = by_slot.get(slot)
        started = task["slot"][2] if task else None
        until = cooling.get(agent_type)
        rows.append(
            {
                "agent": slot,
                "type": agent_type,
                "state": "busy" if task else "free",
                "task": task["row"]["id"] if task else None,
                "elapsed_seconds": round(now - started, 1) if started is not None else None,
                "cooling_until": until if until and until > now else None,
            }
        )
    return rows


def _tally(store: TaskStore, state: State) -> tuple[int, int]:
    """The tasks in one state directory, and in tasks/failed the rejected input files."""
    rejected = len(store.rejected()) if state == "failed" else 0
    return store.counts((state,))[state], rejected


def _tallies(root: Path, store: TaskStore) -> dict[State, tuple[int, int]]:
    """``_tally`` of every state directory. Adding, removing or renaming an entry
    changes a directory's mtime, so a directory whose stamp is unchanged is not
    listed again (at 10,000 tasks, listing is most of what ``status`` does)."""
    out: dict[State, tuple[int, int]] = {}
    with Shelf(root, "tallies", schema=1) as shelf:
        for state in STATES:
            try:
                st = os.stat(store.dir(state))
            except FileNotFoundError:
                out[state] = (0, 0)
                continue
            out[state] = shelf.value(state, st, partial(_tally, store, state))
    return out


def status_report(root: Path, config: Config) -> dict[str, Any]:
    store = TaskStore(root)
    now = time.time()
    state = read_daemon_state(root)
    cooling = {k: v for k, v in state.get("cooling", {}).items() if v > now}
    counted = _tallies(root, store)
    return {
        "counts": {s: tasks for s, (tasks, _) in counted.items()},
        "rejected_files": counted["failed"][1],
        "daemon_pid": read_pid(root),
        "target": config.merge.target,
        "agents": agent_rows(root, config, store, now),
        "cooling": cooling,
        "cost_usd": state.get("cost_usd", {}),
        "tokens": state.get("tokens", {}),
        "max_cost_usd": config.limits.max_cost_usd,
    }


# the shape of what the cache keeps of a task file (``_summary``): bump it when that changes
SUMMARY_SCHEMA = 1


def _dependency_state(task: Task, state: State) -> DependencyState:
    from orchestrator.scheduler import FAILED, MERGED, RUNNING, UNMERGED, DependencyState

    if state in ("pending", "assigned"):
        return DependencyState(RUNNING)
    if state == "failed":
        return DependencyState(FAILED)
    merge = task.result.merge if task.result else None
    if merge is not None and merge.status in MERGED_STATES:
        return DependencyState(MERGED)
    return DependencyState(UNMERGED, merge.message if merge and merge.message else "not merged")


def _summary(state: State, task: Task) -> dict[str, Any]:
    """What listings need of one task file, as plain values the cache can keep:
    its row (``waiting_on`` is filled in by the plan), its state for the tasks
    that depend on it, its slot (agent id, agent type, start time in seconds)
    and, if pending, its fields to plan with."""
    merge = task.result.merge if task.result else None
    dependency = _dependency_state(task, state)
    assignment = task.assignment
    return {
        "row": {
            "id": task.id,
            "state": state,
            "priority": task.priority,
            "agent": (assignment.agent_id if assignment else None)
            or (task.result.agent_id if task.result else None)
            or task.agent,
            "branch": task.result.branch
            if task.result
            else (assignment.branch if assignment else None),
            "merge_status": merge.status if merge else None,
            "conflicts": merge.conflicts if merge else [],
            "waiting_on": None,
            "attempts": len(task.attempts),
            "error": task.result.error if task.result else None,
            "description": task.title,
        },
        "dependency": (dependency.state, dependency.detail),
        "slot": (
            assignment.agent_id,
            assignment.agent_type,
            parse_iso(assignment.started_at) if assignment.started_at else None,
        )
        if assignment
        else None,
        "task": task.to_dict() if state == "pending" else None,
    }


def _read_summary(store: TaskStore, state: State, name: str) -> dict[str, Any]:
    return _summary(state, store.read(store.dir(state) / name).task)


def _task_summaries(
    root: Path, store: TaskStore, states: tuple[State, ...]
) -> list[tuple[State, dict[str, Any]]]:
    """The summary of every task in ``states``, in the order of ``store.iter_tasks``
    and with its rules: a file that vanishes is skipped, and so is an invalid one
    in tasks/pending (intake moves it out); elsewhere it raises TaskValidationError.
    A file unchanged since the last listing is served from the cache."""
    out: list[tuple[State, dict[str, Any]]] = []
    for state in states:
        try:
            folder = os.open(store.dir(state), os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            with Shelf(root, f"tasks-{state}", SUMMARY_SCHEMA) as shelf:
                for task_id in store.ids(state):
                    name = f"{task_id}.yaml"
                    try:
                        # relative to the open directory, the kernel looks up one name
                        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                        summary = shelf.value(name, st, partial(_read_summary, store, state, name))
                    except FileNotFoundError:
                        continue
                    except TaskValidationError:
                        if state != "pending":
                            raise
                        continue
                    out.append((state, summary))
        finally:
            os.close(folder)
    return out


def task_rows(
    root: Path, config: Config, states: tuple[State, ...] = STATES
) -> list[dict[str, Any]]:
    """One row per task, with why each pending task waits (the daemon's own rules)."""
    from orchestrator.scheduler import AgentState, DependencyState, plan

    store = TaskStore(root)
    listed = _task_summaries(root, store, STATES)
    pending = [
        task_from_mapping(s["task"], source=s["row"]["id"], default_id=None).task
        for state, s in listed
        if state == "pending"
    ]
    others = {
        s["row"]["id"]: DependencyState(*s["dependency"])
        for state, s in listed
        if state != "pending"
    }
    agents = {
        name: AgentState(name=name, max_instances=a.max_instances, fallback=a.fallback_agent)
        for name, a in config.agents.items()
    }
    for state, s in listed:
        if state == "assigned" and s["slot"] is not None and s["slot"][1] in agents:
            agents[s["slot"][1]].busy += 1
    decided = plan(
        now=time.time(),
        pending=pending,
        others=others,
        agents=agents,
        aging_seconds=config.defaults.aging_minutes * 60,
    )
    starting = {tid for tid, _ in decided.starts}
    rows = []
    for state, s in listed:
        if state not in states:
            continue
        row = s["row"]
        if state == "pending":
            task_id = row["id"]
            waiting = decided.waiting.get(task_id) or decided.rejected.get(task_id)
            if waiting is None and task_id in starting:
                waiting = "ready: starts when the daemon next looks"
            row = {**row, "waiting_on": waiting}
        rows.append(row)
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
