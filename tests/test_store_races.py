"""Real processes racing on one task tree, started together by a barrier, and
processes killed with SIGKILL inside the critical step of a write."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol import store as store_module
from protocol.errors import IllegalTransitionError
from protocol.store import TaskStore
from protocol.task import Task, TaskId
from tests.protocol_helpers import T0, assignment, state_of_every_file, tmp_leftovers

# fork: the children share the parent's imports and need no resource tracker
CTX = multiprocessing.get_context("fork")
WAIT = 30.0  # bounded wait on any handshake


def _claimer(root: str, n: int, ids: list[str], barrier: Any, out: str) -> None:
    store = TaskStore(Path(root), lock_timeout=WAIT)
    order = list(ids)
    random.Random(n).shuffle(order)
    won, lost = [], 0
    barrier.wait(WAIT)
    for task_id in order:
        try:
            store.claim(task_id, assignment(agent_id=f"agent-{n}"))
            won.append(task_id)
        except IllegalTransitionError:
            lost += 1
    Path(out).write_text(json.dumps({"won": won, "lost": lost}))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_eight_processes_claim_each_of_500_tasks_exactly_once(store: TaskStore) -> None:
    ids = [f"t{i:03d}" for i in range(500)]
    for task_id in ids:
        store.submit(Task(id=TaskId(task_id), description="race"), now=T0)
    barrier = CTX.Barrier(8)
    outs = [store.root / f"claims-{n}.json" for n in range(8)]
    procs = [
        CTX.Process(target=_claimer, args=(str(store.root), n, ids, barrier, str(outs[n])))
        for n in range(8)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT * 3)
    assert [p.exitcode for p in procs] == [0] * 8
    results = [json.loads(out.read_text()) for out in outs]
    winners = Counter(task_id for r in results for task_id in r["won"])
    assert sorted(winners) == ids
    assert set(winners.values()) == {1}  # each task claimed exactly once
    assert sum(r["lost"] for r in results) == 500 * 7  # every other attempt was refused
    assert sum(1 for r in results if r["won"]) > 1  # the processes really did overlap
    for n, r in enumerate(results):
        for task_id in r["won"][:20]:
            task = store.load(task_id)[1]
            assert task.assignment is not None
            assert task.assignment.agent_id == f"agent-{n}"
            assert len(task.attempts) == 1
    assert set(state_of_every_file(store).values()) == {"assigned"}
    assert tmp_leftovers(store) == []


def _submitter(root: str, barrier: Any, out: str) -> None:
    import secrets  # new_task_id imports it when it first makes an id

    real = secrets.token_hex
    calls = []

    def same_first_tail(n: int) -> str:
        calls.append(n)  # every process draws the same tail first: a forced clash
        return "aaaaaa" if len(calls) == 1 else real(n)

    secrets.token_hex = same_first_tail  # type: ignore[assignment]
    store = TaskStore(Path(root), lock_timeout=WAIT)
    barrier.wait(WAIT)
    task = store.submit(Task(id=TaskId(""), description=f"from {os.getpid()}"), now=T0)
    Path(out).write_text(json.dumps({"id": task.id, "pid": os.getpid()}))


@pytest.mark.timeout(60)
def test_twenty_concurrent_submitters_without_ids_make_twenty_tasks(store: TaskStore) -> None:
    barrier = CTX.Barrier(20)
    outs = [store.root / f"submit-{n}.json" for n in range(20)]
    procs = [
        CTX.Process(target=_submitter, args=(str(store.root), barrier, str(outs[n])))
        for n in range(20)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT * 2)
    assert [p.exitcode for p in procs] == [0] * 20
    results = [json.loads(out.read_text()) for out in outs]
    ids = {r["id"] for r in results}
    assert len(ids) == 20
    assert sum(1 for i in ids if i.endswith("-aaaaaa")) == 1  # one won the clash, 19 retried
    assert sorted(store.ids("pending")) == sorted(ids)
    for r in results:
        assert store.load(r["id"])[1].description == f"from {r['pid']}"
    assert state_of_every_file(store) == {i: "pending" for i in ids}
    assert tmp_leftovers(store) == []


# ----- SIGKILL inside the critical step ------------------------------------------------------


def _pause_at(name: str, paused: Any, skip: int = 0) -> None:
    """Make os.<name> tell the parent and block forever on its (skip+1)-th call."""
    real: Callable[..., Any] = getattr(os, name)
    seen = [0]

    def stuck(*args: Any, **kwargs: Any) -> Any:
        seen[0] += 1
        if seen[0] > skip:
            paused.set()
            while True:
                time.sleep(60)
        return real(*args, **kwargs)

    setattr(store_module.os, name, stuck)


def _doomed(root: str, action: str, pause: str, skip: int, paused: Any) -> None:
    store = TaskStore(Path(root), lock_timeout=WAIT)
    _pause_at(pause, paused, skip)
    if action == "submit":
        store.submit(Task(id=TaskId("victim"), description="never half written"), now=T0)
    elif action == "claim":
        store.claim("victim", assignment())
    else:
        store.complete("victim", lambda t: setattr(t, "waiting_reason", "done"))


KILLS = [
    # action, the os call it is stuck in, calls let through first, state after the kill
    ("submit", "fsync", 0, None),  # staging the new file in tasks/.tmp
    ("submit", "link", 0, None),  # holding the lock, about to publish
    ("submit", "unlink", 0, "pending"),  # published, temp name not yet removed
    ("claim", "fsync", 0, "pending"),  # staging the assigned content
    ("claim", "replace", 0, "pending"),  # about to put the new content in place
    # the new content is in place, the move not yet made: the decision is on disk
    ("claim", "rename", 0, "pending"),
    ("complete", "replace", 0, "assigned"),
    ("complete", "rename", 0, "assigned"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("action", "pause", "skip", "after"), KILLS)
def test_sigkill_in_the_middle_leaves_no_partial_or_duplicate_task(
    store: TaskStore, action: str, pause: str, skip: int, after: str | None
) -> None:
    before = None
    if action != "submit":
        store.submit(Task(id=TaskId("victim"), description="never half written"), now=T0)
        if action == "complete":
            store.claim("victim", assignment())
        before = store.load("victim")[1]
    paused = CTX.Event()
    child = CTX.Process(target=_doomed, args=(str(store.root), action, pause, skip, paused))
    child.start()
    try:
        assert paused.wait(WAIT), "the child never reached the critical step"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(WAIT)
    assert child.exitcode == -signal.SIGKILL

    where = state_of_every_file(store)  # every file parses, none in two states
    assert where == ({} if after is None else {"victim": after})
    if after is not None:
        task = store.load("victim")[1]
        assert task.description == "never half written"
        if before is not None:
            # what the crash left is either the old content or the new one, whole
            assert task.attempts == before.attempts or len(task.attempts) == 1
    # the dead writer's temp files are swept; nothing else is
    leftovers = tmp_leftovers(store)
    # before the replace the staged file is still in tasks/.tmp; after it, it is the task
    assert bool(leftovers) == (pause != "rename"), leftovers
    swept = store.sweep_tmp()
    assert sorted(swept) == leftovers
    assert tmp_leftovers(store) == []
    # the lock died with the child: the tree is usable at once
    quick = TaskStore(store.root, lock_timeout=2.0)
    if after is None:
        quick.submit(Task(id=TaskId("victim"), description="again"), now=T0)
        assert quick.load("victim")[0] == "pending"
    elif after == "completed":
        quick.update("victim", lambda t: None, states=("completed",))
    else:
        quick.fail("victim", "recovered after a crash")
        assert quick.load("victim")[0] == "failed"
