"""Fault injection for the reliability suites: misbehaving agents, a daemon that can
be killed and restarted, and the invariant checks every scenario ends with.

    root = make_repo(tmp_path / "repo")
    configure_faults(root, state_dir, slots=3)
    drop_task(root, "t1", "crash")              # an agent that kills itself with SIGSEGV
    with DaemonHandle(root) as daemon:
        daemon.start()
        daemon.kill()                            # SIGKILL, like a power cut for the daemon
        daemon.start(until_idle=True)
        daemon.wait_exit(timeout=60)
    report = check_invariants(root, ids, slots=3)
    assert report.ok, report

The agent is ``tests/fault_agent.py``, a real process started by the same runner as
real agents; the behaviour is named in the task's description (``fault:<name>``).
Waits poll a condition against a deadline (``wait_for``); nothing sleeps to
synchronise.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.helpers import wait_for

PROJECT = Path(__file__).resolve().parent.parent
FAULT_AGENT = Path(__file__).resolve().parent / "fault_agent.py"
TARGET = "orchestrate/integration"
STATES = ("pending", "assigned", "completed", "failed")

# every behaviour tests/fault_agent.py knows, with what the coordinator must make of it
BEHAVIOURS = {
    "ok": "completes and merges",
    "soak": "sleeps 0-300 ms, then completes and merges",
    "exit": "exits 3: retried, then failed with 'exited with code 3'",
    "segv": "kills itself with SIGSEGV: retried, then failed with 'exited with code -11'",
    "hang": "ignores SIGTERM and hangs: SIGKILLed after the grace, failed as timed out",
    "orphan": "leaves a child in its process group: the child is killed when the agent exits",
    "flood": "prints 200 MB: the log is capped and the cap is stated in the result",
    "rm-worktree": "deletes its worktree: failed with 'deleted its worktree', slot recreated",
    "other-branch": "commits on another branch: the work is taken from there and merged",
    "detach": "commits on a detached HEAD: the work is taken from there and merged",
    "rewrite": "rewrites history below its base: failed with 'rewrote history below its base'",
    "foreign-commit": "commits on a branch not its own: its own branch has no changes",
    "idle": "changes nothing: completed, merge status no_changes",
}


def agent_command() -> list[str]:
    return [sys.executable, str(FAULT_AGENT)]


def configure_faults(
    root: Path,
    state_dir: Path,
    *,
    slots: int = 3,
    max_retries: int = 1,
    timeout_minutes: float = 5.0,
    log_cap_bytes: int = 50 * 1024 * 1024,
    flood_mb: int = 200,
    rescan_seconds: float = 0.5,
) -> None:
    """Write orchestrate.yaml: one agent type 'fault' with ``slots`` slots, fast retries."""
    state_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "agents": {
            "fault": {
                "command": agent_command(),
                "max_instances": slots,
                "timeout_minutes": timeout_minutes,
                "env": {"FAULT_STATE": str(state_dir), "FAULT_FLOOD_MB": flood_mb},
            }
        },
        "merge": {"target": TARGET, "mode": "auto"},
        "defaults": {
            "retry_delay_seconds": 0.1,
            "kill_grace_seconds": 1,
            "max_retries": max_retries,
        },
        "limits": {"rescan_seconds": rescan_seconds, "log_cap_bytes": log_cap_bytes},
    }
    (root / "orchestrate.yaml").write_text(yaml.safe_dump(data))


def fault_description(behaviour: str, *, once: bool = False) -> str:
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")
    return f"fault:{behaviour}{' once' if once else ''}\nWrite out/<task id>.txt.\n"


def drop_task(root: Path, task_id: str, behaviour: str = "ok", *, once: bool = False,
              **fields: Any) -> Path:  # fmt: skip
    """Submit a task the way any script may: stage outside pending, then rename in."""
    data = {"id": task_id, "description": fault_description(behaviour, once=once), **fields}
    staged = root / "tasks" / ".tmp" / f"{task_id}.yaml.part"
    staged.write_text(yaml.safe_dump(data))
    dest = root / "tasks" / "pending" / f"{task_id}.yaml"
    os.rename(staged, dest)
    return dest


# ----- waiting ---------------------------------------------------------------------------


def count(root: Path, state: str) -> int:
    try:
        names = os.listdir(root / "tasks" / state)
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if n.endswith(".yaml"))


def task_state(root: Path, task_id: str) -> tuple[str, dict[str, Any]]:
    for state in STATES:
        path = root / "tasks" / state / f"{task_id}.yaml"
        if path.exists():
            return state, yaml.safe_load(path.read_bytes())
    raise AssertionError(f"task {task_id} is in no state directory")


# ----- the daemon as a real process --------------------------------------------------------


class DaemonHandle:
    """``orchestrate -C root start`` as a real subprocess that can be SIGKILLed and restarted.

    Each start appends to ``.orchestrate/test-daemon.log``; ``starts`` and ``kills``
    count what happened, for the figures the suites report.
    """

    def __init__(self, root: Path, *, ready_timeout: float = 30.0) -> None:
        self.root = Path(root)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.peak_rss = 0
        self.log_path = self.root / ".orchestrate" / "test-daemon.log"

    def __enter__(self) -> DaemonHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.kill()
        self.reap()

    def argv(self, *, until_idle: bool = False) -> list[str]:
        argv = [sys.executable, "-m", "orchestrator", "-C", str(self.root), "start"]
        return [*argv, "--until-idle"] if until_idle else argv

    def start(self, *, until_idle: bool = False, wait_ready: bool = True) -> int:
        """Start the daemon; with ``wait_ready``, return once it holds its lock."""
        assert not self.alive(), "the daemon is already running"
        self.reap()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(until_idle=until_idle),
                cwd=PROJECT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
            )
        self.starts += 1
        if wait_ready:
            proc = self.proc
            wait_for(
                lambda: _read_pid(self.root) == proc.pid or proc.poll() is not None,
                timeout=self.ready_timeout,
                what="the daemon to take its lock",
            )
            if proc.poll() is not None and not until_idle:
                raise AssertionError(f"the daemon exited at once with {proc.returncode}:\n"
                                     f"{self.log_tail()}")  # fmt: skip
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample_rss(self) -> int:
        """The daemon's resident memory now (bytes), remembering the peak."""
        try:
            rss = psutil.Process(self.pid).memory_info().rss
        except (psutil.Error, AssertionError):
            return 0
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def kill(self) -> None:
        """SIGKILL the daemon process alone (its agents run on, as after a real crash)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.kills += 1

    def stop(self, *, now: bool = False, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1 if now else signal.SIGTERM)
        return self.wait_exit(timeout=timeout)

    def wait_exit(self, *, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {timeout:g}s:\n{self.log_tail()}"
            ) from None

    def reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    return env


def _read_pid(root: Path) -> int | None:
    from orchestrator.inspect import read_pid

    return read_pid(root)


def run_cli(root: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "-C", str(root), *args],
        cwd=PROJECT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ----- invariants -------------------------------------------------------------------------


@dataclass
class Report:
    """What the invariant checks found; ``problems`` empty means every check held."""

    tasks: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return "invariant violations:\n  " + "\n  ".join(self.problems[:50])


def git(root: Path, *args: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME="Test User", GIT_AUTHOR_EMAIL="user@example.com",
        GIT_COMMITTER_NAME="Test User", GIT_COMMITTER_EMAIL="user@example.com",
    )  # fmt: skip
    result = subprocess.run(
        ["git", *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def agent_processes(root: Path) -> list[psutil.Process]:
    """Live processes started for this repository's agents, found by the environment
    the runner gives every agent (children inherit it), wherever they were reparented."""
    marker = str(Path(root).resolve() / ".orchestrate" / "worktrees")
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("ORCHESTRATE_WORKTREE", "").startswith(marker):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def check_invariants(
    root: Path,
    ids: Iterable[str],
    *,
    slots: int,
    completed: Iterable[str] | None = None,
    target: str = TARGET,
    orphan_wait: float = 5.0,
) -> Report:
    """The shared end-of-scenario checks.

    ``ids`` are every task that was submitted; ``completed`` (default: all of them)
    are those that must have completed, merged exactly once, with ``out/<id>.txt``
    in the target.
    """
    root = Path(root)
    ids = list(ids)
    must_complete = set(ids if completed is None else completed)
    report = Report(tasks=len(ids))
    problem = report.problems.append

    where: dict[str, list[str]] = {}
    for state in STATES:
        for name in os.listdir(root / "tasks" / state):
            if name.endswith(".yaml"):
                where.setdefault(name[: -len(".yaml")], []).append(state)
    for task_id in ids:
        places = where.get(task_id, [])
        if not places:
            report.lost.append(task_id)
            problem(f"{task_id}: in no state directory (lost)")
        elif len(places) > 1:
            report.duplicated.append(task_id)
            problem(f"{task_id}: in {len(places)} state directories {places}")
        elif task_id in must_complete and places != ["completed"]:
            problem(f"{task_id}: in tasks/{places[0]}, expected tasks/completed")

    merges: dict[str, int] = {}
    for subject in git(root, "log", "--format=%s", target).splitlines():
        match = re.match(r"Merge task (\S+?):", subject)
        if match:
            merges[match.group(1)] = merges.get(match.group(1), 0) + 1
    added: dict[str, int] = {}
    log = git(root, "log", "--diff-filter=A", "--name-only", "--format=", target, "--", "out")
    for path in log.split():
        added[path] = added.get(path, 0) + 1
    tree = set(git(root, "ls-tree", "-r", "--name-only", target, "--", "out").split())
    for task_id in sorted(must_complete):
        path = f"out/{task_id}.txt"
        if path not in tree:
            if task_id not in report.lost:
                report.lost.append(task_id)
            problem(f"{task_id}: {path} is not in {target}")
        if added.get(path, 0) > 1 or merges.get(task_id, 0) > 1:
            if task_id not in report.duplicated:
                report.duplicated.append(task_id)
            problem(
                f"{task_id}: added {added.get(path, 0)} times and merged "
                f"{merges.get(task_id, 0)} times into {target}"
            )
        if task_id in where and where[task_id] == ["completed"]:
            _, data = task_state(root, task_id)
            status = ((data.get("result") or {}).get("merge") or {}).get("status")
            if status not in ("merged", "no_changes"):
                problem(f"{task_id}: merge status {status!r}")

    try:
        wait_for(lambda: not agent_processes(root), timeout=orphan_wait, what="agents to exit")
    except AssertionError:
        for proc in agent_processes(root):
            with _suppress_psutil():
                report.orphans.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                proc.kill()
        problem(f"agent processes left running: {report.orphans}")

    # a registration git lists as 'prunable' has no working tree: one a slot retired
    # after its agent deleted the worktree, left to git's prune
    worktrees = [
        block.splitlines()[0]
        for block in git(root, "worktree", "list", "--porcelain").strip().split("\n\n")
        if "\nprunable" not in block
    ]
    if len(worktrees) - 1 > slots:
        problem(f"{len(worktrees) - 1} agent worktrees for {slots} slots: {worktrees}")
    base = root / ".orchestrate" / "worktrees"
    if base.is_dir() and len(os.listdir(base)) > slots:
        problem(f"{base} holds {sorted(os.listdir(base))} for {slots} slots")

    leftovers = os.listdir(root / "tasks" / ".tmp")
    if leftovers:
        problem(f"tasks/.tmp is not empty: {leftovers[:10]}")

    fsck = subprocess.run(
        ["git", "fsck", "--strict", "--no-progress"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    bad = [line for line in (fsck.stdout + fsck.stderr).splitlines()
           if not line.startswith("dangling ")]  # fmt: skip
    if fsck.returncode != 0 or bad:
        problem(f"git fsck --strict: exit {fsck.returncode}: {bad[:10]}")
    return report


class _suppress_psutil:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, psutil.Error)


def tree_snapshot(top: Path, *, skip: Iterable[Path]) -> dict[str, tuple[int, int]]:
    """Every path under ``top`` except those under ``skip``: (size, mtime_ns), for
    checking that nothing outside the allowed places was created or touched."""
    skipped = {str(Path(p).resolve()) for p in skip}
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if str(Path(dirpath, d).resolve()) not in skipped]
        for name in [*filenames, *dirnames]:
            path = Path(dirpath, name)
            st = path.lstat()
            out[str(path)] = (st.st_size, st.st_mtime_ns if name in filenames else 0)
    return out
