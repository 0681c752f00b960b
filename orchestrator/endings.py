"""What happens when an agent's run ends: its work is settled on its branch, merged
or retried, deferred after a usage limit, or saved on a ref when it is stopped.

``RunEndings`` is a part of the daemon kept in its own module; it works on the
daemon's state (the store, the worktree pool, the runs) and decides nothing about
what starts next.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import context as ctx
from orchestrator.config import AgentConfig, Config
from orchestrator.events import EventLog
from orchestrator.git import Git, GitError, orchestrate_identity
from orchestrator.inspect import STATE_FILE
from orchestrator.merge import MergeOutcome, merge_branch
from orchestrator.runner import AgentRun
from orchestrator.scheduler import AgentState, Queue
from orchestrator.worktrees import WorktreePool, branch_name, start_mark
from protocol.errors import IllegalTransitionError, TaskNotFoundError
from protocol.store import TaskStore
from protocol.task import Assignment, Attempt, MergeInfo, Result, Task, utc_iso


@dataclass
class Running:
    task_id: str
    slot: str
    agent: AgentConfig
    attempt: int
    base_commit: str
    worktree: Path
    run: AgentRun
    started_at: float
    timeout_seconds: float
    title: str


@dataclass
class Settled:
    """What a settle worker found and did after a run (see ``RunEndings._settle``)."""

    outcome: dict[str, Any]
    repair: str | None = None
    rate_limited: bool = False
    saved: str | None = None  # the ref that keeps a failed or deferred attempt's work
    head: str | None = None  # the branch's commit, when the run succeeded
    files: list[str] = field(default_factory=list)
    merge: MergeOutcome | None = None
    output: Path | None = None


class RunEndings:
    """The daemon's handling of finished, failed, limited and interrupted runs."""

    root: Path
    config: Config
    store: TaskStore
    git: Git
    pool: WorktreePool
    events: EventLog
    context: ctx.ContextWriter
    runs: dict[str, Running]
    settling: dict[str, tuple[Running, Task, float, Future[Settled]]]
    workers: ThreadPoolExecutor
    wake: threading.Event
    busy: dict[str, str]
    pending: Queue
    agents: dict[str, AgentState]
    spent_usd: float
    _state: dict[str, Any]
    _host: str

    def _requeue(
        self, task_id: str, reason: str, *, not_before: str | None = None, mutate: Any = None
    ) -> None:
        """Put a task back in pending, on disk and in the daemon's own view."""
        task = self.store.requeue(task_id, reason, not_before=not_before, mutate=mutate)
        self.pending[task.id] = task

    def _interrupt(self, running: Running, reason: str) -> None:
        """Stop an agent now, keep its work on a ref, and put its task back in pending."""
        running.run.terminate(reason)
        if not running.run.wait(self.config.defaults.kill_grace_seconds):
            running.run.kill()
            running.run.wait()
        self.runs.pop(running.task_id, None)
        self.busy.pop(running.slot, None)
        now = time.time()
        try:
            _, task = self.store.load(running.task_id)
        except TaskNotFoundError:
            return
        saved = self._save_work(task, "interrupted")

        def mark(t: Task) -> None:
            if t.attempts:
                t.attempts[-1].outcome = "interrupted"
                t.attempts[-1].ended_at = utc_iso(now)
                t.attempts[-1].exit_code = running.run.returncode
                t.attempts[-1].saved_ref = saved

        try:
            self._requeue(running.task_id, f"requeued: {reason}", mutate=mark)
        except (TaskNotFoundError, IllegalTransitionError):
            return
        self.pool.detach(running.slot)
        note = f"; work kept at {saved}" if saved else ""
        self.events.emit(
            "requeue", f"requeued {running.task_id}: {reason}{note}", task=running.task_id
        )

    def _save_work(self, task: Task, why: str) -> str | None:
        """Keep what an attempt produced (commits and uncommitted files) on a ref."""
        a = task.assignment
        if a is None or a.base_commit is None:
            return None
        wt = Path(a.worktree)
        if not (wt / ".git").exists():
            return None
        git = self.git.at(wt)
        try:
            head = git.rev_parse("HEAD")
            snapshot = git.snapshot_worktree(
                orchestrate_identity(f"orchestrate agent {a.agent_id}"),
                f"WIP: task {task.id}, attempt {a.attempt} ({why})\n\nOrchestrate-Task: {task.id}\n",
            )
        except GitError:
            return None
        keep = snapshot or head
        if keep is None or keep == a.base_commit:
            return None
        ref = f"refs/orchestrate/attempts/{task.id}/{a.attempt}"
        self.git.run("update-ref", ref, keep)
        return ref

    # ----- finishing an agent -----------------------------------------------------------
    def _finish(self, running: Running, now: float) -> None:
        """An agent exited: hand its git work to a settle worker. The slot stays busy,
        and the task assigned, until ``_conclude`` applies what the worker found."""
        self.runs.pop(running.task_id, None)
        code = running.run.returncode
        duration = now - running.started_at
        try:
            _, task = self.store.load(running.task_id)
        except TaskNotFoundError:
            task = None
        if (
            task is None
            or task.assignment is None
            or not (self.store.dir("assigned") / f"{task.id}.yaml").exists()
        ):
            self.busy.pop(running.slot, None)
            self.events.emit(
                "cancelled",
                f"{running.task_id} was cancelled; its agent was stopped",
                task=running.task_id,
            )
            if task is not None:
                self._save_work_from(running, task)
            return
        self.events.emit(
            "exited",
            f"{task.id} exited with code {code} after {duration:.1f}s",
            task=task.id,
            exit_code=code,
            seconds=round(duration, 3),
        )
        job = self.workers.submit(self._settle, running, task, now)
        self.settling[task.id] = (running, task, now, job)
        job.add_done_callback(lambda _: self.wake.set())

    def _settle(self, running: Running, task: Task, now: float) -> Settled:
        """The git work after a run, on a settle worker: it reads and writes the slot's
        worktree, the task's branch and the target, and no state of the daemon's."""
        run = running.run
        head, problem, repair = self._settle_branch(running, task)
        changed = head is not None and head != running.base_commit
        outcome = _outcome(running, run.returncode, run.output_tail(), changed)
        if repair is not None:  # the result names what the agent did, not only the log
            outcome["reason"] = "; ".join(filter(None, [outcome.get("reason"), repair]))
        if run.stop_reason is not None:
            said = outcome.get("reason")
            reason = run.stop_reason + (f" ({said})" if said and run.timed_out else "")
            outcome.update(success=False, reason=reason)
        if problem is not None:
            outcome.update(success=False, reason=problem)
        # a CLI that retries a usage limit for longer than the task's timeout (Aider)
        # is stopped by it: still the limit, not the task, so deferred all the same
        limited = bool(outcome.get("rate_limited")) and (run.stop_reason is None or run.timed_out)
        settled = Settled(outcome=outcome, repair=repair, rate_limited=limited)
        if limited or not outcome["success"]:
            settled.saved = self._save_work(task, "rate limited" if limited else "failed")
            self.pool.detach(running.slot, head=head)
            return settled
        assert head is not None
        settled.head = head
        settled.files = (
            self.git.changed_files(running.base_commit, head) if head != running.base_commit else []
        )
        self.pool.detach(running.slot, head=head)
        settled.merge = merge_branch(
            self.git,
            target=self.config.merge.target,
            branch_commit=head,
            base_commit=running.base_commit,
            task_id=task.id,
            title=running.title,
            dry_run=self.config.merge.mode == "manual",
        )
        settled.output = ctx.write_output(
            self.root,
            task,
            {"agent": running.slot, "exit code": run.returncode,
             "duration": f"{now - running.started_at:.1f}s", "branch": branch_name(task.id),
             "commit": head, "merge": settled.merge.status},
            run.output_tail(),
        )  # fmt: skip
        return settled

    def _conclude(self, running: Running, task: Task, settled: Settled, now: float) -> None:
        """Record a settled run: completed and merged, retried, failed or deferred."""
        outcome = settled.outcome
        if settled.repair is not None:
            self.events.emit("repair", f"{task.id}: {settled.repair}", task=task.id)
        self._account(running.agent.name, outcome)
        if settled.rate_limited:
            self._defer_rate_limited(running, task, outcome, now, settled.saved)
            return
        if not outcome["success"]:
            self._after_failure(
                task.id,
                running.agent,
                running.attempt,
                now,
                outcome["reason"],
                settled.saved,
                code=running.run.returncode,
                tail=running.run.output_tail(4000),
                stats=outcome,
            )
            return
        self._complete(running, task, settled, now)

    def _save_work_from(self, running: Running, task: Task) -> None:
        task.assignment = task.assignment or Assignment(
            agent_id=running.slot, agent_type=running.agent.name, worktree=str(running.worktree),
            branch=branch_name(task.id), host=self._host, attempt=running.attempt,
            assigned_at=utc_iso(running.started_at), base_commit=running.base_commit,
        )  # fmt: skip
        saved = self._save_work(task, "cancelled")
        if saved:
            self.events.emit(
                "saved", f"{task.id}: the cancelled attempt's work is kept at {saved}", task=task.id
            )
        self.pool.detach(running.slot)

    def _settle_branch(
        self, running: Running, task: Task
    ) -> tuple[str | None, str | None, str | None]:
        """Commit what the agent left uncommitted and make ``agent/<id>`` hold its work.

        Returns (head commit, problem, repair): a problem is set when the agent left
        its branch in a state that cannot be merged as the task's work; a repair says
        where the work was taken from when the agent moved away from its branch.
        """
        wt = running.worktree
        branch = branch_name(task.id)
        if not (wt / ".git").exists():
            return None, "the agent deleted its worktree", None
        git = self.git.at(wt)
        try:
            symbolic = git.symbolic_head()
            head = git.rev_parse("HEAD")
            snapshot = git.snapshot_worktree(
                orchestrate_identity(f"orchestrate agent {running.slot}"),
                f"{running.title}\n\nWork left uncommitted by agent {running.slot}.\n\n"
                f"Orchestrate-Task: {task.id}\n",
            )
            head = snapshot or head
        except GitError as exc:
            return None, f"the agent left its worktree broken: {exc}", None
        if head is None:
            return None, "the agent left its worktree without a HEAD commit", None
        note = None
        if symbolic != f"refs/heads/{branch}":
            where = symbolic.removeprefix("refs/heads/") if symbolic else "a detached HEAD"
            note = f"the agent moved its worktree to {where}"
        if not self.git.is_ancestor(running.base_commit, head):
            rewrote = (
                f"{note + '; ' if note else ''}the agent rewrote history below its base "
                f"{running.base_commit[:12]}"
            )
            return None, rewrote, None
        if head == running.base_commit:
            stray = self._commits_elsewhere(git, running)
            if stray is not None:
                astray = (
                    f"the agent committed {stray} instead of on its branch {branch}, "
                    "which it left unchanged"
                )
                return None, astray, None
        self.git.run("update-ref", f"refs/heads/{branch}", head)
        return head, None, f"{note}; its work was taken from there" if note else None

    def _commits_elsewhere(self, git: Git, running: Running) -> str | None:
        """Commits this run made in its worktree that are on no path to its base, read
        from the worktree's own HEAD reflog: newest first, back to the checkout that
        started the run (not back to a time, which would take in the slot's last run)."""
        mark = start_mark(branch_name(running.task_id))
        text = git.run("reflog", "show", "--format=%H%x00%gs", "HEAD", check=False)
        found: list[str] = []
        for line in text.stdout.splitlines():
            sha, _, subject = line.partition("\0")
            if subject == mark:
                break
            if sha not in found and not self.git.is_ancestor(sha, running.base_commit):
                found.append(sha)
        else:
            return None  # the run's start is not in the reflog: nothing can be told apart
        if not found:
            return None
        names = self.git.out("branch", "--contains", found[0], "--format=%(refname:short)")
        where = f" on {', '.join(names.split())}" if names else ""
        return f"{len(found)} commit(s) ({found[0][:12]}{where})"

    def _complete(self, running: Running, task: Task, settled: Settled, now: float) -> None:
        head, merge, output, outcome = settled.head, settled.merge, settled.output, settled.outcome
        assert head is not None and merge is not None and output is not None
        code = running.run.returncode
        duration = now - running.started_at
        files = settled.files

        def finish(t: Task) -> None:
            _end_attempt(t, now, code, "succeeded", None)
            t.result = Result(
                agent_id=running.slot,
                agent_type=running.agent.name,
                branch=branch_name(t.id),
                base_commit=running.base_commit,
                commit=head,
                files_changed=files,
                output_file=str(output.relative_to(self.root)),
                log_file=str(running.run.log_path.relative_to(self.root)),
                log_truncated=running.run.truncated,
                duration_seconds=round(duration, 3),
                session_id=outcome.get("session_id"),
                turns=outcome.get("turns"),
                input_tokens=outcome.get("input_tokens"),
                output_tokens=outcome.get("output_tokens"),
                cost_usd=outcome.get("cost_usd"),
                reason=outcome.get("reason"),
                merge=_merge_info(merge),
            )
            if running.run.truncated:
                t.result.reason = (
                    f"{t.result.reason or 'done'}; output over the log cap of "
                    f"{self.config.limits.log_cap_bytes} bytes was cut"
                )

        done = self.store.complete(task.id, finish)
        self.context.record(done)
        self.events.emit(
            "completed",
            f"completed {task.id}: {len(files)} files changed on {branch_name(task.id)}",
            task=task.id,
        )
        self._announce_merge(task.id, merge)

    def _announce_merge(self, task_id: str, merge: MergeOutcome) -> None:
        if merge.status == "merged":
            text = f"merged {task_id} into {merge.target} ({(merge.commit or '')[:12]})"
        elif merge.status == "conflict":
            text = f"CONFLICT {task_id}: {', '.join(merge.conflicts)} (branch kept; fix it and run 'orchestrate merge {task_id}')"
        else:
            text = f"merge {merge.status} for {task_id}: {merge.message}"
        self.events.emit(
            "merge", text, task=task_id, status=merge.status, conflicts=merge.conflicts
        )

    def _after_failure(
        self,
        task_id: str,
        agent: AgentConfig,
        attempt: int,
        now: float,
        reason: str,
        saved: str | None,
        *,
        code: int | None = None,
        tail: str = "",
        stats: dict[str, Any] | None = None,
    ) -> None:
        """Retry with exponential backoff and jitter, or give up into tasks/failed."""
        try:
            _, task = self.store.load(task_id)
        except TaskNotFoundError:
            return
        max_retries = (
            task.max_retries if task.max_retries is not None else self.config.defaults.max_retries
        )
        # attempts that ended in a failure of their own; interrupted and limited ones
        # (and one a crash left without an outcome) do not use up retries
        failures = 1 + sum(1 for a in task.attempts[:-1] if a.outcome in ("failed", "timeout"))

        def end(t: Task) -> None:
            _end_attempt(t, now, code, "timeout" if "timed out" in reason else "failed", reason)
            if t.attempts:
                t.attempts[-1].saved_ref = saved

        note = f" (work kept at {saved})" if saved else ""
        if failures <= max_retries:
            delay = self.config.defaults.retry_delay_seconds * 2 ** (failures - 1)
            delay *= 0.5 + random.random()
            when = utc_iso(now + delay)
            self._requeue(
                task_id, f"attempt {attempt} failed: {reason}", not_before=when, mutate=end
            )
            self.events.emit(
                "retry",
                f"{task_id} attempt {attempt} failed ({reason}){note}; retry {failures} of {max_retries} in {delay:.0f}s",
                task=task_id,
            )
            return

        def give_up(t: Task) -> None:
            end(t)
            t.result = Result(
                agent_id=t.attempts[-1].agent_id if t.attempts else None,
                agent_type=agent.name,
                branch=branch_name(t.id),
            )
            for key in ("session_id", "turns", "input_tokens", "output_tokens", "cost_usd"):
                setattr(t.result, key, (stats or {}).get(key))

        error = f"gave up after {failures} failed attempts: {reason}{note}"
        if tail.strip():
            error += f"\nlast output:\n{tail[-2000:]}"
        self.store.fail(task_id, error, mutate=give_up)
        self.events.emit(
            "failed", f"FAILED {task_id} after {failures} attempts: {reason}", task=task_id
        )

    def _defer_rate_limited(
        self,
        running: Running,
        task: Task,
        outcome: dict[str, Any],
        now: float,
        saved: str | None,
    ) -> None:
        retry_at = outcome.get("retry_at") or now + self.config.defaults.cooldown_seconds
        retry_at = max(retry_at, now + 1.0)
        state = self.agents[running.agent.name]
        state.cooling_until = retry_at
        self._state.setdefault("cooling", {})[running.agent.name] = retry_at
        self._write_state()

        def end(t: Task) -> None:
            _end_attempt(t, now, running.run.returncode, "rate_limited", outcome.get("reason"))
            if t.attempts:
                t.attempts[-1].saved_ref = saved

        self._requeue(
            task.id,
            f"{running.agent.name} hit a usage limit ({outcome.get('reason')})",
            not_before=utc_iso(retry_at),
            mutate=end,
        )
        self.events.emit(
            "rate_limited",
            f"{task.id}: {running.agent.name} hit a usage limit; cooling down until {utc_iso(retry_at)}",
            task=task.id,
            agent_type=running.agent.name,
            until=retry_at,
        )

    def _account(self, agent_type: str, outcome: dict[str, Any]) -> None:
        """Add an attempt's cost and tokens to the totals that ``status`` shows."""
        cost = outcome.get("cost_usd")
        tokens = (outcome.get("input_tokens") or 0) + (outcome.get("output_tokens") or 0)
        if not cost and not tokens:
            return
        if cost:
            self.spent_usd += float(cost)
            costs = self._state.setdefault("cost_usd", {})
            costs[agent_type] = round(costs.get(agent_type, 0.0) + float(cost), 6)
        if tokens:
            counts = self._state.setdefault("tokens", {})
            counts[agent_type] = counts.get(agent_type, 0) + tokens
        self._write_state()

    def _write_state(self) -> None:
        ctx.atomic_write(self.root / STATE_FILE, json.dumps(self._state, indent=1))


def _end_attempt(task: Task, now: float, code: int | None, outcome: str, error: str | None) -> None:
    if not task.attempts:
        task.attempts.append(
            Attempt(number=1, agent_id="?", agent_type="?", started_at=utc_iso(now))
        )
    last = task.attempts[-1]
    last.ended_at = utc_iso(now)
    last.exit_code = code
    last.outcome = outcome
    last.error = error


def _merge_info(merge: MergeOutcome) -> MergeInfo:
    return MergeInfo(
        status=merge.status,
        target=merge.target,
        conflicts=merge.conflicts,
        commit=merge.commit,
        message=merge.message,
    )


def _outcome(running: Running, code: int | None, tail: str, changed: bool) -> dict[str, Any]:
    """Success and figures from the preset's parser, or from the exit code alone."""
    exit_code = code if code is not None else -1
    if running.agent.preset is None:
        reason = "exited 0" if exit_code == 0 else f"exited with code {exit_code}"
        return {"success": exit_code == 0, "reason": reason}
    from orchestrator.presets import PRESETS

    result = PRESETS[running.agent.preset].parse(exit_code, tail, changed)
    return {
        "success": result.success,
        "reason": result.reason,
        "session_id": result.session_id,
        "turns": result.turns,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "cost_usd": result.cost_usd,
        "rate_limited": result.rate_limited,
        "retry_at": result.retry_at,
    }
