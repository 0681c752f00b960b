"""The pure scheduler, stepped with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.scheduler import (
    FAILED,
    MERGED,
    RUNNING,
    UNMERGED,
    AgentState,
    DependencyState,
    Queue,
    plan,
    queue_order,
)
from protocol.task import PRIORITIES, Task, TaskId, utc_iso

T0 = 1_800_000_000.0


def task(task_id: str, priority: str = "normal", at: float | None = T0, **fields: object) -> Task:
    submitted = utc_iso(at) if at is not None else None
    t = Task(id=TaskId(task_id), description="x", priority=priority, submitted_at=submitted)  # type: ignore[arg-type]
    for key, value in fields.items():
        setattr(t, key, value)
    return t


def agents(**slots: int) -> dict[str, AgentState]:
    return {name: AgentState(name=name, max_instances=n) for name, n in slots.items()}


def test_priority_order_then_first_in_first_out() -> None:
    pending = [
        task("low1", "low", T0),
        task("norm2", "normal", T0 + 2),
        task("high", "high", T0 + 5),
        task("norm1", "normal", T0 + 1),
    ]
    result = plan(now=T0 + 10, pending=pending, others={}, agents=agents(a=3), aging_seconds=1800)
    assert [tid for tid, _ in result.starts] == ["high", "norm1", "norm2"]
    assert result.waiting["low1"] == "waiting for a free agent slot"


def test_a_waiting_low_task_is_promoted_so_it_never_starves() -> None:
    old_low = task("old-low", "low", T0)
    fresh_normal = task("fresh", "normal", T0 + 3599)
    now = T0 + 3600  # the low task has waited two aging periods
    result = plan(
        now=now, pending=[fresh_normal, old_low], others={}, agents=agents(a=1), aging_seconds=1800
    )
    assert result.starts == [("old-low", "a")]
    before = plan(
        now=T0 + 60,
        pending=[fresh_normal, old_low],
        others={},
        agents=agents(a=1),
        aging_seconds=1800,
    )
    assert before.starts == [("fresh", "a")]


def test_named_agent_waits_for_its_type_and_unnamed_takes_least_loaded() -> None:
    pool = agents(claude=1, codex=2)
    pool["claude"].busy = 1
    pending = [task("wants-claude", agent="claude"), task("anyone", at=T0 + 1)]
    result = plan(now=T0, pending=pending, others={}, agents=pool, aging_seconds=0)
    assert result.starts == [("anyone", "codex")]
    assert result.waiting["wants-claude"] == "waiting: all 1 'claude' slots are busy"


def test_unknown_agent_is_rejected_with_the_list() -> None:
    result = plan(
        now=T0,
        pending=[task("x", agent="nope")],
        others={},
        agents=agents(a=1, b=1),
        aging_seconds=0,
    )
    assert result.rejected == {"x": "agent type 'nope' is not configured (configured: a, b)"}


def test_dependencies_cycles_missing_failed_and_unmerged() -> None:
    pending = [
        task("ready", depends_on=[TaskId("done")]),
        task("waits", depends_on=[TaskId("busy")]),
        task("c1", depends_on=[TaskId("c2")]),
        task("c2", depends_on=[TaskId("c1")]),
        task("lost", depends_on=[TaskId("ghost")]),
        task("after-fail", depends_on=[TaskId("broken")]),
        task("after-conflict", depends_on=[TaskId("clash")]),
        task("chain", depends_on=[TaskId("lost")]),
    ]
    others = {
        "done": DependencyState(MERGED),
        "busy": DependencyState(RUNNING),
        "broken": DependencyState(FAILED),
        "clash": DependencyState(UNMERGED, "conflicts in a.txt"),
    }
    result = plan(now=T0, pending=pending, others=others, agents=agents(a=8), aging_seconds=0)
    assert result.starts == [("ready", "a")]
    assert result.waiting["waits"] == "waits on 'busy' (running)"
    assert "dependency cycle" in result.waiting["c1"] and "dependency cycle" in result.waiting["c2"]
    assert result.waiting["lost"] == "depends on 'ghost', which does not exist"
    assert result.waiting["after-fail"].startswith("dependency 'broken' failed")
    assert (
        result.waiting["after-conflict"]
        == "dependency 'clash' is completed but not merged: conflicts in a.txt"
    )
    assert result.waiting["chain"].startswith("waits on 'lost', which cannot run")
    assert result.stuck == {"c1", "c2", "lost", "after-fail", "after-conflict", "chain"}


def test_a_long_chain_does_not_overflow_the_stack() -> None:
    pending = [task(f"t{n}", depends_on=[TaskId(f"t{n + 1}")]) for n in range(5000)]
    pending.append(task("t5000", depends_on=[TaskId("t0")]))
    result = plan(now=T0, pending=pending, others={}, agents=agents(a=1), aging_seconds=0)
    assert result.starts == []
    assert len(result.stuck) == 5001


def test_not_before_and_cooling_and_spacing_set_the_next_wake() -> None:
    pool = agents(a=2, b=1)
    pool["a"].cooling_until = T0 + 100
    pool["b"].min_interval = 5
    pool["b"].last_start = T0 - 1
    pending = [
        task("later", not_before=utc_iso(T0 + 30), waiting_reason="retry"),
        task("x", agent="a"),
        task("y", agent="b"),
    ]
    result = plan(now=T0, pending=pending, others={}, agents=pool, aging_seconds=0)
    assert result.starts == []
    assert result.waiting["x"] == "waiting: 'a' is cooling down after a usage limit"
    assert result.waiting["y"] == "waiting: 'b' starts are spaced 5s apart"
    assert result.next_wake == T0 + 4


def test_fallback_agent_takes_over_while_the_preferred_one_cools() -> None:
    pool = agents(claude=1, codex=1)
    pool["claude"].cooling_until = T0 + 100
    result = plan(
        now=T0,
        pending=[task("x", agent="claude", fallback_agent="codex")],
        others={},
        agents=pool,
        aging_seconds=0,
    )
    assert result.starts == [("x", "codex")]


def test_budget_stops_dispatch() -> None:
    result = plan(
        now=T0,
        pending=[task("x")],
        others={},
        agents=agents(a=1),
        aging_seconds=0,
        budget_reason="budget spent",
    )
    assert result.starts == [] and result.waiting == {"x": "budget spent"}
    assert result.stuck == {"x"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(PRIORITIES), st.integers(0, 20_000)), min_size=0, max_size=40
    ),
    st.integers(0, 40_000),
    st.sampled_from([0.0, 600.0, 1800.0]),
)
def test_the_lazy_queue_order_is_the_sorted_order(
    specs: list[tuple[str, int]], later: int, aging: float
) -> None:
    pending = [
        task(f"t{n:02d}", priority, T0 + at if at % 7 else None)  # some with no time at all
        for n, (priority, at) in enumerate(specs)
    ]
    queue = Queue(pending[::2])  # built both at once and one task at a time
    for t in pending[1::2]:
        queue[t.id] = t
    for t in pending[::5]:  # tasks leave and come back
        del queue[t.id]
        queue[t.id] = t
    now = T0 + later
    eager = [t.id for t in queue_order(queue, now, aging)]
    lazy = [t.id for t in queue_order(queue, now, aging, lazy=True)]
    assert lazy == eager and sorted(eager) == sorted(t.id for t in pending)


class CountingLookup(dict[str, DependencyState]):
    """Dependency states that record which tasks the plan asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> DependencyState | None:  # type: ignore[override]
        self.asked.add(key)
        return DependencyState(MERGED)


def test_a_plan_without_explanations_stops_once_every_agent_is_taken() -> None:
    pending = [task(f"t{n:04d}", at=T0 + n, depends_on=[f"d{n:04d}"]) for n in range(1000)]
    full = plan(now=T0 + 5000, pending=pending, others=CountingLookup(), agents=agents(a=2),
                aging_seconds=1800)  # fmt: skip
    lookup = CountingLookup()
    quick = plan(now=T0 + 5000, pending=pending, others=lookup, agents=agents(a=2),
                 aging_seconds=1800, explain=False)  # fmt: skip
    assert quick.starts == full.starts == [("t0000", "a"), ("t0001", "a")]
    assert full.complete and len(full.waiting) == 998
    # the third task shows no agent is free: nothing behind it is looked at
    assert not quick.complete and lookup.asked == {"d0000", "d0001"}
    # with a free agent left, every task is looked at, and the plan is complete
    roomy = plan(now=T0 + 5000, pending=pending[:3], others=CountingLookup(),
                 agents=agents(a=5), aging_seconds=1800, explain=False)  # fmt: skip
    assert roomy.complete and len(roomy.starts) == 3
