"""Pure scheduling: given the tasks and the agents, what starts now and why others wait.

No files, no processes, no clock: the caller passes ``now``. The daemon calls
``plan`` on every tick; ``orchestrate tasks`` calls it too, to explain waits.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.task import PRIORITIES, Task, parse_iso

# the state of a task that others may depend on
MERGED = "merged"  # completed, and merged into the target (or nothing to merge)
RUNNING = "running"  # pending or assigned: still on its way
UNMERGED = "unmerged"  # completed, but its merge conflicted, was blocked or is manual
FAILED = "failed"


@dataclass
class AgentState:
    name: str
    max_instances: int
    busy: int = 0
    cooling_until: float | None = None
    last_start: float | None = None
    min_interval: float = 0.0
    fallback: str | None = None

    def free_at(self, now: float) -> bool:
        return (
            self.busy < self.max_instances
            and (self.cooling_until is None or self.cooling_until <= now)
            and (self.last_start is None or self.last_start + self.min_interval <= now)
        )


@dataclass
class DependencyState:
    state: str  # MERGED | RUNNING | UNMERGED | FAILED
    detail: str = ""


@dataclass
class Plan:
    starts: list[tuple[str, str]] = field(default_factory=list)  # (task id, agent type)
    waiting: dict[str, str] = field(default_factory=dict)  # task id -> why it waits
    rejected: dict[str, str] = field(default_factory=dict)  # task id -> why it can never run
    stuck: set[str] = field(default_factory=set)  # waits that no amount of time will end
    next_wake: float | None = None
    complete: bool = True  # False: stopped once no agent was free (see ``explain``)


def effective_level(task: Task, now: float, aging_seconds: float) -> int:
    """0 = high. A task waiting ``aging_seconds`` climbs one level, so none starves."""
    level = PRIORITIES.index(task.priority)
    if task.submitted_at is not None and aging_seconds > 0:
        waited = now - parse_iso(task.submitted_at)
        level -= max(0, int(waited // aging_seconds))
    return max(0, level)


def _lane_key(task: Task) -> tuple[str, str]:
    # a task with no submission time counts as the newest: it has not aged
    return (task.submitted_at or "~", task.id)


class Queue(MutableMapping[str, Task]):
    """The pending tasks by id, also kept in submission order per priority as they
    come and go (a bisection each), so a plan that takes the first few tasks of a
    long queue neither sorts nor walks the rest."""

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._by_id: dict[str, Task] = {}
        self._lanes: list[list[tuple[str, str]]] = [[] for _ in PRIORITIES]
        for task in tasks:
            self[task.id] = task

    def __getitem__(self, task_id: str) -> Task:
        return self._by_id[task_id]

    def __setitem__(self, task_id: str, task: Task) -> None:
        if task_id != task.id:
            raise ValueError(f"queue key {task_id!r} is not the task's id {task.id!r}")
        if task_id in self._by_id:
            del self[task_id]
        bisect.insort(self._lanes[PRIORITIES.index(task.priority)], _lane_key(task))
        self._by_id[task_id] = task

    def __delitem__(self, task_id: str) -> None:
        task = self._by_id.pop(task_id)
        lane, key = self._lanes[PRIORITIES.index(task.priority)], _lane_key(task)
        at = bisect.bisect_left(lane, key)
        # a task is never changed while queued (a changed file is a new Task)
        assert at < len(lane) and lane[at] == key, f"{task_id} changed while queued"
        del lane[at]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def lanes(self) -> list[Iterator[Task]]:
        """Each priority's tasks, oldest first."""
        return [(self._by_id[task_id] for _, task_id in lane) for lane in self._lanes]


def queue_order(
    queue: Queue, now: float, aging_seconds: float, *, lazy: bool = False
) -> Iterator[Task]:
    """The pending tasks in the order they may start: by effective level, then by
    submission time, then by id.

    With ``lazy``, for a caller that takes only the first few of a long queue: within
    one priority an older task has waited longer, so its effective level is never
    higher, and each priority's lane in submission order is already in order; the
    lanes are merged as they are read, computing no aging for the rest. Without it,
    one sort (faster when every task is taken). Both give the same order."""

    def key(t: Task) -> tuple[int, str, str]:
        return (effective_level(t, now, aging_seconds), *_lane_key(t))

    if not lazy:
        return iter(sorted(queue.values(), key=key))
    return heapq.merge(*queue.lanes(), key=key)


def plan(
    *,
    now: float,
    pending: Queue | Sequence[Task],
    others: Mapping[str, DependencyState],
    agents: Mapping[str, AgentState],
    aging_seconds: float,
    budget_reason: str | None = None,
    explain: bool = True,
) -> Plan:
    """Decide which pending tasks start now, on which agent type.

    ``others`` holds every task id that is not pending (assigned, completed,
    failed) with its dependency state. ``agents`` is updated in place as slots are
    handed out, so the caller sees the load after this plan. Without ``explain``
    the plan stops once no agent can take a task (then ``complete`` is False and
    ``waiting`` and ``stuck`` cover only the tasks it looked at): a long queue then
    costs little, as the tasks behind the first few are never ordered or walked.
    """
    result = Plan()
    queue = pending if isinstance(pending, Queue) else Queue(pending)
    blocked = _DependencyBlocks(queue, others)

    def wake_at(moment: float) -> None:
        if result.next_wake is None or moment < result.next_wake:
            result.next_wake = moment

    for task in queue_order(queue, now, aging_seconds, lazy=not explain):
        if not explain and not any(a.free_at(now) for a in agents.values()):
            result.complete = False
            break
        if task.agent is not None and task.agent not in agents:
            result.rejected[task.id] = (
                f"agent type '{task.agent}' is not configured "
                f"(configured: {', '.join(sorted(agents))})"
            )
            continue
        if task.fallback_agent is not None and task.fallback_agent not in agents:
            result.rejected[task.id] = (
                f"fallback_agent '{task.fallback_agent}' is not configured "
                f"(configured: {', '.join(sorted(agents))})"
            )
            continue
        reason = blocked.reason(task.id)
        if reason is not None:
            result.waiting[task.id] = reason[0]
            if reason[1]:
                result.stuck.add(task.id)
            continue
        if task.not_before is not None:
            moment = parse_iso(task.not_before)
            if moment > now:
                why = task.waiting_reason or "waiting to retry"
                result.waiting[task.id] = f"{why}; not before {task.not_before}"
                wake_at(moment)
                continue
        if budget_reason is not None:
            result.waiting[task.id] = budget_reason
            result.stuck.add(task.id)  # only a person raising the budget ends this wait
            continue
        chosen = _choose_agent(task, agents, now)
        if chosen is None:
            result.waiting[task.id] = _why_no_agent(task, agents, now)
            for agent in _candidates(task, agents):
                if agent.busy < agent.max_instances:
                    if agent.cooling_until is not None and agent.cooling_until > now:
                        wake_at(agent.cooling_until)
                    if agent.last_start is not None and agent.min_interval > 0:
                        wake_at(agent.last_start + agent.min_interval)
            continue
        chosen.busy += 1
        chosen.last_start = now
        result.starts.append((task.id, chosen.name))
        if chosen.min_interval > 0:
            wake_at(now + chosen.min_interval)
    return result


def _candidates(task: Task, agents: Mapping[str, AgentState]) -> list[AgentState]:
    if task.agent is None:
        return list(agents.values())
    out = [agents[task.agent]]
    fallback = task.fallback_agent or agents[task.agent].fallback
    if fallback is not None and fallback in agents:
        out.append(agents[fallback])
    return out


def _choose_agent(task: Task, agents: Mapping[str, AgentState], now: float) -> AgentState | None:
    if task.agent is not None:
        preferred = agents[task.agent]
        if preferred.free_at(now):
            return preferred
        cooling = preferred.cooling_until is not None and preferred.cooling_until > now
        for other in _candidates(task, agents)[1:]:
            if cooling and other.free_at(now):
                return other
        return None
    free = [a for a in agents.values() if a.free_at(now)]
    if not free:
        return None
    return min(free, key=lambda a: (a.busy / a.max_instances, a.busy, a.name))


def _why_no_agent(task: Task, agents: Mapping[str, AgentState], now: float) -> str:
    names = [task.agent] if task.agent is not None else sorted(agents)
    parts = []
    for name in names:
        agent = agents[name]
        if agent.cooling_until is not None and agent.cooling_until > now:
            parts.append(f"'{name}' is cooling down after a usage limit")
        elif agent.busy >= agent.max_instances:
            parts.append(f"all {agent.max_instances} '{name}' slots are busy")
        else:
            parts.append(f"'{name}' starts are spaced {agent.min_interval:g}s apart")
    if task.agent is None:
        return "waiting for a free agent slot"
    return "waiting: " + "; ".join(parts)


class _DependencyBlocks:
    """task id -> (why it waits on its dependencies, whether the wait can never end),
    worked out on demand: a task's walk visits only its own dependency chain.

    An iterative depth-first walk, so a chain of thousands of tasks cannot overflow
    the stack; a dependency met on the current path closes a cycle. A task blocked
    through a chain names the root cause, so reasons do not nest along the chain.
    """

    def __init__(self, pending: Mapping[str, Task], others: Mapping[str, DependencyState]) -> None:
        self.pending = pending
        self.others = others
        self.out: dict[str, tuple[str, bool]] = {}
        self.roots: dict[str, str] = {}  # stuck task id -> the reason at the bottom of its chain
        self.finished: set[str] = set()

    def reason(self, task_id: str) -> tuple[str, bool] | None:
        if task_id not in self.finished:
            self._walk(task_id)
        return self.out.get(task_id)

    def _walk(self, start: str) -> None:
        pending, others, out, roots, finished = (
            self.pending, self.others, self.out, self.roots, self.finished,
        )  # fmt: skip
        # frame: [task id, index of the next dependency, reasons, root cause or None]
        frames: list[list[Any]] = [[start, 0, [], None]]
        path: list[str] = [start]
        on_path: set[str] = {start}

        def stuck(frame: list[Any], reason: str, root: str | None = None) -> None:
            frame[2].append(reason)
            if frame[3] is None:
                frame[3] = root or reason

        def via_pending(frame: list[Any], dep: str) -> None:
            root = roots.get(dep)
            if root is not None:
                stuck(frame, f"waits on '{dep}', which cannot run: {root}", root)
            else:
                frame[2].append(f"waits on '{dep}' (pending)")

        while frames:
            frame = frames[-1]
            deps = pending[frame[0]].depends_on
            if frame[1] < len(deps):
                dep = deps[frame[1]]
                frame[1] += 1
                if dep in pending:
                    if dep in finished:
                        via_pending(frame, dep)
                    elif dep in on_path:
                        cycle = [*path[path.index(dep) :], dep]
                        stuck(frame, f"dependency cycle: {' -> '.join(cycle)}")
                    else:
                        frames.append([dep, 0, [], None])
                        path.append(dep)
                        on_path.add(dep)
                    continue
                state = others.get(dep)
                if state is None:
                    stuck(frame, f"depends on '{dep}', which does not exist")
                elif state.state == RUNNING:
                    frame[2].append(f"waits on '{dep}' (running)")
                elif state.state == FAILED:
                    stuck(
                        frame,
                        f"dependency '{dep}' failed "
                        f"(run 'orchestrate retry {dep}' or cancel this task)",
                    )
                elif state.state == UNMERGED:
                    stuck(frame, f"dependency '{dep}' is completed but not merged: {state.detail}")
                continue
            frames.pop()
            on_path.discard(path.pop())
            task_id = frame[0]
            finished.add(task_id)
            if frame[3] is not None:
                roots[task_id] = frame[3]
            if frame[2]:
                out[task_id] = ("; ".join(frame[2]), frame[3] is not None)
            if frames:
                via_pending(frames[-1], task_id)
