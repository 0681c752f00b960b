"""The daemon: file-system events and a timer wake it; ``tick(now)`` does the work.

``tick`` reaps finished agents, enforces timeouts, takes in new task files and
starts what the scheduler picks. Every decision and every change of a task's
state is made here, in the one loop; the slow git work of a slot (resetting its
worktree before a run, snapshotting and merging its work after) runs on a
worker thread per slot, and the loop applies its result on a later tick. Signal
handlers only set flags: the first SIGTERM or SIGINT stops new work and lets
agents finish; a second (or SIGUSR1) kills the agents' process groups, saves
their work and requeues their tasks.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import filelock

from orchestrator import context as ctx
from orchestrator.config import AgentConfig, Config
from orchestrator.endings import RunEndings, Running, Settled
from orchestrator.events import EventLog
from orchestrator.git import Git, add_excludes
from orchestrator.inspect import (
    LOCK_FILE,
    MERGED_STATES,
    PID_FILE,
    RUNTIME_DIR,
    read_daemon_state,
    read_pid,
)
from orchestrator.runner import AgentRun, build_invocation, kill_process_group
from orchestrator.scheduler import (
    FAILED,
    MERGED,
    RUNNING,
    UNMERGED,
    AgentState,
    DependencyState,
    Queue,
    plan,
)
from orchestrator.worktrees import WorktreePool, branch_name
from protocol.errors import IllegalTransitionError, OrchestrateError, TaskNotFoundError
from protocol.store import TaskStore
from protocol.task import Assignment, Task, utc_iso

LOCK_PROBE_GRACE = 2.0  # seconds a start waits for the daemon lock before giving way


class DaemonRunningError(OrchestrateError):
    def __init__(self, root: Path, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"a daemon is already running on {root} ({who} holds {LOCK_FILE}); "
            "stop it with 'orchestrate stop' or watch it with 'orchestrate status'"
        )


@dataclass
class _Wakeups:
    """What file-system events said since the last tick (filled by the watcher thread)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pending_names: set[str] = field(default_factory=set)
    writing: set[str] = field(default_factory=set)  # written to, not yet closed
    assigned_changed: bool = False


class _Lookup(Mapping[str, DependencyState]):
    """A read-only mapping whose values are looked up on first use, and kept."""

    def __init__(self, lookup: Callable[[str], DependencyState | None]) -> None:
        self._lookup = lookup
        self._found: dict[str, DependencyState | None] = {}

    def __getitem__(self, key: str) -> DependencyState:
        if key not in self._found:
            self._found[key] = self._lookup(key)
        value = self._found[key]
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (k for k, v in self._found.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for v in self._found.values() if v is not None)


@dataclass
class _Preparing:
    """A claimed task whose slot's worktree a worker is preparing."""

    slot: str
    task: Task
    agent: AgentConfig
    attempt: int
    base: str
    now: float  # the tick that claimed it
    job: Future[tuple[float, float]]


class Daemon(RunEndings):
    def __init__(
        self,
        root: Path,
        config: Config,
        *,
        echo: Callable[[str], None] | None = print,
        install_signals: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self.config = config
        self.store = TaskStore(self.root)
        self.git = Git(self.root)
        self.pool = WorktreePool(self.git, self.root, config.copy_ignored)
        self.events = EventLog(self.root, echo)
        self.context = ctx.ContextWriter(self.root)
        self.wake = threading.Event()
        self.install_signals = install_signals
        self.stop_mode: str | None = None  # None | "warm" | "now"
        self.interrupted = False  # stopped by Ctrl-C
        self.runs: dict[str, Running] = {}
        self.slots = dict(config.slots())  # slot id -> agent type
        self.busy: dict[str, str] = {}  # slot id -> task id, from claim until settled
        # each slot's git work (its worktree's reset before a run; snapshot and merge
        # after) runs on a worker, so one slot's git work never holds up another's
        self.settling: dict[str, tuple[Running, Task, float, Future[Settled]]] = {}
        self.preparing: dict[str, _Preparing] = {}  # and before it starts, its worktree
        self.workers = ThreadPoolExecutor(
            max_workers=max(1, len(self.slots)), thread_name_prefix="orchestrate-slot"
        )
        self.agents = {
            name: AgentState(
                name=name,
                max_instances=a.max_instances,
                min_interval=(
                    a.min_start_interval_seconds
                    if a.min_start_interval_seconds is not None
                    else config.defaults.min_start_interval_seconds
                ),
                fallback=a.fallback_agent,
            )
            for name, a in config.agents.items()
        }
        self.pending = Queue()  # what intake found ready, in the order it may start
        self.waiting: dict[str, str] = {}
        self.stuck: set[str] = set()
        self.next_wake: float | None = None
        self.spent_usd = 0.0
        self._state = read_daemon_state(self.root)
        self._wakeups = _Wakeups()
        self._next_full_scan = 0.0
        self._dep_cache: dict[str, tuple[int, DependencyState]] = {}
        self._lock = filelock.FileLock(str(self.root / LOCK_FILE), timeout=0)
        self._observer: Any = None
        self._host = socket.gethostname()
        self._opened = False

    # ----- lifecycle ------------------------------------------------------------------

    def open(self, now: float | None = None) -> None:
        """Take the daemon lock, sweep leftovers and recover from a previous crash."""
        now = time.time() if now is None else now
        (self.root / RUNTIME_DIR).mkdir(parents=True, exist_ok=True)
        try:
            # 'status' and 'stop' probe the lock by taking it for an instant, so a free
            # lock can look taken for that instant: wait it out, then give way
            self._lock.acquire(timeout=LOCK_PROBE_GRACE)
        except filelock.Timeout:
            raise DaemonRunningError(self.root, _holder_pid(self.root)) from None
        self._opened = True
        try:
            self._prepare(now)
        except BaseException:
            self.close()
            raise

    def _prepare(self, now: float) -> None:
        (self.root / PID_FILE).write_text(f"{os.getpid()}\n")
        self.store.ensure_layout()
        target = self.config.merge.target
        if self.git.rev_parse(f"refs/heads/{target}") is None:
            head = self.git.rev_parse("HEAD")
            if head is None:
                raise OrchestrateError(
                    "the repository has no commits yet; make a first commit, then start again"
                )
            self.git.update_ref(f"refs/heads/{target}", head, None, "orchestrate: create target")
            self.events.emit("target", f"created merge target '{target}' from HEAD")
        swept = self.store.sweep_tmp(now=now)
        if swept:
            self.events.emit("sweep", f"removed {len(swept)} stale temp files from tasks/.tmp")
        self._recover(now)
        removed = self.pool.prune(set(self.slots))
        if removed:
            self.events.emit("prune", f"removed leftover worktrees: {', '.join(removed)}")
        self.spent_usd = sum(self._state.get("cost_usd", {}).values())
        for name, until in self._state.get("cooling", {}).items():
            if name in self.agents and until > now:
                self.agents[name].cooling_until = until

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        for running in list(self.runs.values()):
            self._interrupt(running, "the daemon stopped")
        self._collect_prepared(wait=True)  # their tasks go back to pending
        self._collect_settled(wait=True)  # work a worker has begun is finished, not lost
        self.workers.shutdown()
        if self._opened:
            self._flush_context(force=True)
        self.events.close()
        if self._opened:
            (self.root / PID_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._opened = False

    def _recover(self, now: float) -> None:
        """Requeue tasks left assigned by a daemon that died, keeping the agents' work."""
        for task_id in self.store.ids("assigned"):
            try:
                _, task = self.store.load(task_id)
            except (TaskNotFoundError, OrchestrateError):
                continue
            if task.result is not None and (task.result.merge is not None or task.result.error):
                # the last daemon decided this task's end and died before moving it
                self._finish_decided(task)
                continue
            a = task.assignment
            if a is not None and a.pid is not None:
                if kill_process_group(a.pid, a.process_started):
                    self.events.emit(
                        "recover",
                        f"stopped agent pid {a.pid} left by the last daemon",
                        task=task_id,
                    )
            saved = self._save_work(task, "interrupted")
            note = f" (its work is kept at {saved})" if saved else ""

            def mark(t: Task, saved: str | None = saved) -> None:
                if t.attempts:
                    t.attempts[-1].outcome = "interrupted"
                    t.attempts[-1].ended_at = utc_iso(now)
                    t.attempts[-1].saved_ref = saved

            self._requeue(task_id, f"requeued after the daemon stopped{note}", mutate=mark)
            self.events.emit(
                "requeue", f"requeued {task_id}: its agent is gone{note}", task=task_id
            )

    def _finish_decided(self, task: Task) -> None:
        result = task.result
        assert result is not None
        if result.merge is not None:
            done = self.store.complete(task.id)
            self.context.record(done)
            self.events.emit(
                "recover", f"completed {task.id}, whose result the last daemon wrote", task=task.id
            )
        else:
            self.store.fail(task.id, result.error or "failed")
            self.events.emit(
                "recover", f"failed {task.id}, as the last daemon decided", task=task.id
            )

    def request_stop(self, mode: str) -> None:
        if mode == "now" or self.stop_mode == "warm":
            self.stop_mode = "now"
        else:
            self.stop_mode = "warm"
        self.wake.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.interrupted = True
        self.request_stop("now" if signum == signal.SIGUSR1 else "warm")

    def _start_watching(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        # watchdog warns when an event races the observer's shutdown; that is harmless
        logging.getLogger("watchdog").setLevel(logging.ERROR)

        tasks_dir = str(self.store.tasks_dir)
        pending_prefix = str(self.store.dir("pending")) + os.sep
        assigned_prefix = str(self.store.dir("assigned")) + os.sep
        wakeups = self._wakeups
        wake = self.wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
                with wakeups.lock:
                    for path in paths:
                        if path.startswith(pending_prefix):
                            name = path[len(pending_prefix) :]
                            wakeups.pending_names.add(name)
                            # a file written in place is not taken while still open
                            # (IN_MODIFY: a file moved in whole raises none)
                            if event.event_type == "modified" and path == paths[0]:
                                wakeups.writing.add(name)
                            elif event.event_type in ("closed", "deleted", "moved"):
                                wakeups.writing.discard(name)
                        elif path.startswith(assigned_prefix):
                            wakeups.assigned_changed = True
                wake.set()

        observer = Observer()
        observer.schedule(Handler(), tasks_dir, recursive=True)
        observer.start()
        self._observer = observer

    def run(self, *, until_idle: bool = False) -> int:
        """The loop. Returns the exit code for ``orchestrate start``."""
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGUSR1, self._on_signal)
        self.open()
        try:
            self._start_watching()
            self.events.emit("start", f"daemon {os.getpid()} watching {self.store.dir('pending')}")
            while True:
                now = time.time()
                self.tick(now)
                if self.stop_mode is not None and not self._working():
                    break
                if until_idle and self.idle():
                    break
                self.wake.wait(self._sleep_for(time.time()))
                self.wake.clear()
        finally:
            self.close()
        if self.interrupted:
            return 130  # Ctrl-C, as for any command
        return 0 if self.all_done() else 1

    def _sleep_for(self, now: float) -> float:
        delay = self.config.limits.rescan_seconds
        if self.next_wake is not None:
            delay = min(delay, max(0.0, self.next_wake - now))
        for running in self.runs.values():
            deadline = running.started_at + running.timeout_seconds
            if running.run.term_sent_at is not None:
                deadline = now + 0.2
            delay = min(delay, max(0.01, deadline - now))
        return delay

    def _working(self) -> bool:
        """A worktree being prepared, an agent running, or a run being settled."""
        return bool(self.preparing or self.runs or self.settling)

    def idle(self) -> bool:
        """Nothing under way, and nothing pending that could ever start."""
        if self._working():
            return False
        if self.store.counts()["pending"] != len(self.pending):
            self._next_full_scan = 0.0  # files we have not taken in yet: look again
            return False
        return all(tid in self.stuck for tid in self.pending)

    def all_done(self) -> bool:
        counts = self.store.counts()
        if counts["pending"] or counts["assigned"] or counts["failed"]:
            return False
        for _, task in self.store.iter_tasks(("completed",)):
            merge = task.result.merge if task.result else None
            if merge is None or merge.status not in MERGED_STATES:
                return False
        return True

    # ----- the step ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        with self._wakeups.lock:
            names = set(self._wakeups.pending_names)
            self._wakeups.pending_names.clear()
            writing = set(self._wakeups.writing)
            assigned_changed = self._wakeups.assigned_changed
            self._wakeups.assigned_changed = False
        full_scan = now >= self._next_full_scan
        self._collect_settled()
        self._collect_prepared()
        self._check_runs(now, cancelled_check=assigned_changed or full_scan)
        if self.stop_mode == "now":
            for running in list(self.runs.values()):
                self._interrupt(running, "stopped by 'orchestrate stop --now'")
            return
        began = time.monotonic()
        self._intake(now, None if full_scan else names, writing)
        if self.stop_mode is None:
            self._dispatch(now, explain=full_scan)
        if full_scan:  # a rescan of a long queue is spaced out, not let grow its share
            cost = time.monotonic() - began
            self._next_full_scan = now + ctx.paced(self.config.limits.rescan_seconds, cost)
        self._flush_context()

    def _intake(self, now: float, names: set[str] | None, writing: Collection[str] = ()) -> None:
        if names is not None and not names:
            return
        report = self.store.intake(now=now, names=names, writing=writing)
        for name, message in report.rejected:
            self.events.emit("rejected", f"rejected tasks/pending/{name}: {message}", file=name)
        for warning in report.warnings:
            self.events.emit("warning", warning)
        ready: dict[str, Task] = {t.id: t for t in report.ready if t.id not in self.runs}
        if names is None:
            for gone in [tid for tid in self.pending if tid not in ready]:
                del self.pending[gone]
            for tid, task in ready.items():
                if self.pending.get(tid) is not task:  # a file intake read again
                    self.pending[tid] = task
        else:
            for name in names:
                task_id = name[: -len(".yaml")] if name.endswith(".yaml") else None
                if task_id is not None and task_id not in ready:
                    if not (self.store.dir("pending") / name).exists():
                        self.pending.pop(task_id, None)
            self.pending.update(ready)
        if report.deferred:
            self.next_wake = now + 1.0

    def _dependency_state(self, dep: str) -> DependencyState | None:
        """What a task that is not pending means to those that depend on it (None if
        there is no such task). The plan asks only for the tasks it looks at."""
        if dep in self.runs or dep in self.settling or dep in self.preparing:
            return DependencyState(RUNNING)
        found = self.store.locate(dep)
        if found is None:
            return None
        state, path = found
        if state in ("pending", "assigned"):
            return DependencyState(RUNNING)
        if state == "failed":
            return DependencyState(FAILED)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._dep_cache.get(dep)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            task = self.store.read(path).task
        except (FileNotFoundError, OrchestrateError):
            return None
        merge = task.result.merge if task.result else None
        if merge is not None and merge.status in MERGED_STATES:
            dep_state = DependencyState(MERGED)
        else:
            detail = merge.message if merge and merge.message else "its merge has not happened"
            dep_state = DependencyState(UNMERGED, detail)
        self._dep_cache[dep] = (mtime, dep_state)
        return dep_state

    def _budget_reason(self) -> str | None:
        limit = self.config.limits.max_cost_usd
        if limit is not None and self.spent_usd >= limit:
            return f"the cost budget of ${limit:.2f} is spent (${self.spent_usd:.2f}); raise limits.max_cost_usd"
        return None

    def _dispatch(self, now: float, *, explain: bool = True) -> None:
        """Start what the scheduler picks. With every slot taken nothing can start, so
        the plan (which orders the whole queue) is made only when ``explain`` asks for
        fresh waiting reasons: on the periodic rescan, not on every event."""
        for name, agent in self.agents.items():  # a settling slot is not free yet
            agent.busy = sum(1 for slot in self.busy if self.slots.get(slot) == name)
        if not explain and all(a.busy >= a.max_instances for a in self.agents.values()):
            return  # before anything that walks the queue: this is most ticks of a long run
        if not self.pending:
            self.waiting, self.stuck, self.next_wake = {}, set(), None
            return
        decided = plan(
            now=now,
            pending=self.pending,
            others=_Lookup(self._dependency_state),
            agents=self.agents,
            aging_seconds=self.config.defaults.aging_minutes * 60,
            budget_reason=self._budget_reason(),
            explain=explain,
        )
        self.next_wake = decided.next_wake
        if decided.complete:  # else the reasons from the last full plan stand
            self.waiting, self.stuck = decided.waiting, decided.stuck
        for task_id, reason in decided.rejected.items():
            self._reject_task(task_id, reason)
        for task_id, agent_type in decided.starts:
            try:
                self._start(task_id, agent_type, now)
            except Exception as exc:  # one task's trouble must not stop the daemon
                self._contain(task_id, "starting", exc)

    def _reject_task(self, task_id: str, reason: str) -> None:
        self.pending.pop(task_id, None)
        try:
            self.store.fail(task_id, reason)
        except (TaskNotFoundError, IllegalTransitionError):
            return
        self.events.emit("failed", f"failed {task_id}: {reason}", task=task_id)

    # ----- starting an agent ---------------------------------------------------------

    def _free_slot(self, agent_type: str) -> str | None:
        for slot, kind in self.slots.items():
            if kind == agent_type and slot not in self.busy:
                return slot
        return None

    def _start(self, task_id: str, agent_type: str, now: float) -> None:
        """Claim a task for a free slot and hand the slot's worktree to a worker to
        prepare; ``_launch`` starts the agent once it is ready."""
        slot = self._free_slot(agent_type)
        if slot is None:
            return  # stays pending for the next plan
        task = self.pending.pop(task_id, None)
        if task is None:
            return
        agent = self.config.agents[agent_type]
        base = self.git.rev_parse(f"refs/heads/{self.config.merge.target}")
        if base is None:
            self.events.emit(
                "error",
                f"merge target '{self.config.merge.target}' is gone; not starting {task_id}",
            )
            return
        attempt = len(task.attempts) + 1
        assignment = Assignment(
            agent_id=slot,
            agent_type=agent_type,
            worktree=str(self.pool.path(slot)),
            branch=branch_name(task_id),
            host=self._host,
            attempt=attempt,
            assigned_at=utc_iso(now),
            base_commit=base,
        )
        try:
            task = self.store.claim(task_id, assignment)
        except (TaskNotFoundError, IllegalTransitionError):
            return  # cancelled or taken meanwhile
        self.busy[slot] = task_id
        if agent.preset is not None:
            from orchestrator.presets import PRESETS

            # files the CLI itself leaves in the worktree (caches) are not work
            add_excludes(self.git, list(PRESETS[agent.preset].scratch_patterns))
        job = self.workers.submit(self._prepare_slot, slot, task_id, base)
        self.preparing[task_id] = _Preparing(slot, task, agent, attempt, base, now, job)
        job.add_done_callback(lambda _: self.wake.set())

    def _prepare_slot(self, slot: str, task_id: str, base: str) -> tuple[float, float]:
        """On a worker: the slot's worktree reset to a fresh branch at ``base``.
        Returns when the preparation began and ended (for the started event)."""
        preparing = time.time()
        self.pool.prepare(slot, task_id, base)
        return preparing, time.time()

    def _collect_prepared(self, *, wait: bool = False) -> None:
        """Launch the agents whose worktrees are ready (wait for all, with ``wait``).
        A stop that came meanwhile puts their tasks back in pending instead."""
        for task_id, prep in list(self.preparing.items()):
            if not wait and not prep.job.done():
                continue
            del self.preparing[task_id]
            try:
                timing = prep.job.result()
            except (OSError, OrchestrateError) as exc:
                del self.busy[prep.slot]
                self._after_failure(
                    task_id,
                    prep.agent,
                    prep.attempt,
                    prep.now,
                    f"could not start the agent: {exc}",
                    None,
                )
                continue
            except Exception as exc:  # one task's trouble must not stop the daemon
                self._contain(task_id, "starting", exc)
                continue
            if self.stop_mode is not None or wait:
                self._unclaim(prep, "the daemon stopped before its agent started")
                continue
            try:
                self._launch(prep, timing)
            except Exception as exc:  # one task's trouble must not stop the daemon
                self._contain(task_id, "starting", exc)

    def _unclaim(self, prep: _Preparing, reason: str) -> None:
        """Put a claimed task whose agent never started back in pending."""
        self.busy.pop(prep.slot, None)
        now = time.time()

        def mark(t: Task) -> None:
            if t.attempts:
                t.attempts[-1].outcome = "interrupted"
                t.attempts[-1].ended_at = utc_iso(now)

        try:
            self._requeue(prep.task.id, f"requeued: {reason}", mutate=mark)
        except (TaskNotFoundError, IllegalTransitionError):
            return
        self.pool.detach(prep.slot)
        self.events.emit("requeue", f"requeued {prep.task.id}: {reason}", task=prep.task.id)

    def _launch(self, prep: _Preparing, timing: tuple[float, float]) -> None:
        """Start the agent in its prepared worktree and record its process."""
        task, slot, agent, attempt, now = prep.task, prep.slot, prep.agent, prep.attempt, prep.now
        task_id = task.id
        worktree = self.pool.path(slot)
        try:
            prompt, notes = ctx.build_prompt(
                self.root, task, self.config.limits.prompt_budget_bytes
            )
            prompt_file = self.root / RUNTIME_DIR / "prompts" / f"{task_id}.md"
            ctx.atomic_write(prompt_file, prompt)
            invocation = build_invocation(
                agent,
                slot=slot,
                task_id=task_id,
                prompt=prompt,
                prompt_file=prompt_file,
                worktree=worktree,
                root=self.root,
            )
            run = AgentRun(
                invocation,
                log_path=self.root / RUNTIME_DIR / "logs" / f"{task_id}.{attempt}.log",
                log_cap_bytes=self.config.limits.log_cap_bytes,
                on_exit=self.wake.set,
            )
            spawned = time.time()
        except (OSError, OrchestrateError) as exc:
            del self.busy[slot]
            self._after_failure(
                task_id, agent, attempt, now, f"could not start the agent: {exc}", None
            )
            return
        for note in notes:
            self.events.emit("prompt", f"{task_id}: {note}", task=task_id)
        timeout_minutes = (
            task.timeout_minutes or agent.timeout_minutes or self.config.defaults.timeout_minutes
        )
        self.runs[task_id] = Running(
            task_id=task_id,
            slot=slot,
            agent=agent,
            attempt=attempt,
            base_commit=prep.base,
            worktree=worktree,
            run=run,
            started_at=now,
            timeout_seconds=timeout_minutes * 60,
            title=task.title,
        )
        started = _process_start_time(run.pid)

        def mark(t: Task) -> None:
            if t.assignment is not None:
                t.assignment.pid = run.pid
                t.assignment.process_started = started
                t.assignment.started_at = utc_iso(now)
                t.assignment.heartbeat_at = utc_iso(now)

        try:
            self.store.update(task_id, mark)
        except (TaskNotFoundError, IllegalTransitionError):
            run.terminate("the task was cancelled")
        self.events.emit(
            "started",
            f"started {task_id} on {slot} (attempt {attempt}, pid {run.pid})",
            task=task_id,
            agent=slot,
            attempt=attempt,
            # when the tick that claimed it began, the worktree was being and was
            # prepared, the agent was spawned: what the dispatch benchmark splits by
            timing=[now, *timing, spawned],
        )

    # ----- watching agents ---------------------------------------------------------------

    def _check_runs(self, now: float, *, cancelled_check: bool) -> None:
        grace = self.config.defaults.kill_grace_seconds
        for running in list(self.runs.values()):
            run = running.run
            if run.done:
                try:
                    self._finish(running, now)
                except Exception as exc:  # one task's trouble must not stop the daemon
                    self._contain(running.task_id, "finishing", exc)
                continue
            if (
                cancelled_check
                and not (self.store.dir("assigned") / f"{running.task_id}.yaml").exists()
            ):
                run.terminate("the task was cancelled")
            elif now - running.started_at > running.timeout_seconds:
                if run.term_sent_at is None:
                    minutes = running.timeout_seconds / 60
                    run.timed_out = True
                    run.terminate(f"timed out after {minutes:g} minutes")
                    self.events.emit(
                        "timeout",
                        f"{running.task_id} timed out after {minutes:g} min; stopping its process group",
                        task=running.task_id,
                    )
            if run.term_sent_at is not None and not run.kill_sent:
                if time.monotonic() - run.term_sent_at >= grace:
                    run.kill()

    def _collect_settled(self, *, wait: bool = False) -> None:
        """Apply the work of every settle worker that is done (all of it, with ``wait``)."""
        for task_id, (running, task, now, job) in list(self.settling.items()):
            if not wait and not job.done():
                continue
            del self.settling[task_id]
            self.busy.pop(running.slot, None)
            try:
                self._conclude(running, task, job.result(), now)
            except Exception as exc:  # one task's trouble must not stop the daemon
                self._contain(task_id, "finishing", exc)

    def _contain(self, task_id: str, step: str, exc: Exception) -> None:
        """Record an unexpected error in one task's handling and set that task aside
        in tasks/failed (its branch and refs are kept), so every other task goes on."""
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.events.emit(
            "error",
            f"unexpected error while {step} {task_id}: {detail}",
            task=task_id,
            traceback=traceback.format_exc(),
        )
        for running in list(self.runs.values()):
            if running.task_id == task_id and running.run.done:
                self.runs.pop(task_id, None)
                self.busy.pop(running.slot, None)
        self.busy = {
            slot: tid
            for slot, tid in self.busy.items()
            if tid in self.runs or tid in self.settling or tid in self.preparing
        }
        self.pending.pop(task_id, None)
        if task_id in self.runs:
            return
        try:
            self.store.fail(
                task_id,
                f"orchestrate failed while {step} this task: {detail} "
                f"(see .orchestrate/events.jsonl; 'orchestrate retry {task_id}' to try again)",
            )
        except (TaskNotFoundError, IllegalTransitionError):
            pass  # it moved on meanwhile (cancelled, or already finished)
        except Exception as again:  # the store itself is in trouble: say so and go on
            self.events.emit("error", f"could not set {task_id} aside: {again}", task=task_id)

    # ----- context ---------------------------------------------------------------------

    def _flush_context(self, *, force: bool = False) -> None:
        if not self.context.due(force=force):
            return  # counting the task tree on every tick would grow with the queue
        now = time.time()
        running = [(tid, r.slot, now - r.started_at) for tid, r in self.runs.items()]
        try:
            self.context.flush(
                running=running, waiting=self.waiting, counts=dict(self.store.counts()), force=force
            )
        except OSError as exc:
            self.events.emit("error", f"could not update context/: {exc}")


def _holder_pid(root: Path, wait: float = 2.0) -> int | None:
    """The pid of the daemon that holds the lock. It writes its pid file just after
    taking the lock, so a start that lost the race by a moment waits for it, briefly."""
    deadline = time.monotonic() + wait
    while True:
        pid = read_pid(root)
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(0.02)


def _process_start_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
