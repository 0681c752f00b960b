"""Random sequences of transitions from several actors keep every invariant of the store."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from protocol.errors import IllegalTransitionError, TaskNotFoundError
from protocol.store import TaskStore
from protocol.task import Task, TaskId
from tests.protocol_helpers import T0, assignment, state_of_every_file, tmp_leftovers

ACTORS = 3
ALLOWED = {
    "claim": ("pending",),
    "complete": ("assigned",),
    "fail": ("pending", "assigned"),
    "requeue": ("assigned",),
    "retry": ("failed",),
    "cancel": ("pending", "assigned"),
}
TARGET = {
    "claim": "assigned",
    "complete": "completed",
    "fail": "failed",
    "requeue": "pending",
    "retry": "pending",
    "cancel": "failed",
}
descriptions = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())


class StoreMachine(RuleBasedStateMachine):
    """Several TaskStore objects (one per actor) on one tree, against a model of states."""

    @initialize()
    def make_tree(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="store-machine-"))
        self.actors = [TaskStore(self.root, lock_timeout=10.0) for _ in range(ACTORS)]
        self.actors[0].ensure_layout()
        self.model: dict[str, str] = {}
        self.description: dict[str, str] = {}
        self.attempts: dict[str, int] = {}
        self.order: list[str] = []

    def teardown(self) -> None:
        root = getattr(self, "root", None)
        if root is not None:
            shutil.rmtree(root)

    @rule(actor=st.integers(0, ACTORS - 1), named=st.booleans(), description=descriptions)
    def submit(self, actor: int, named: bool, description: str) -> None:
        task_id = f"t{len(self.order)}" if named else ""
        task = self.actors[actor].submit(Task(id=TaskId(task_id), description=description), now=T0)
        assert task.id not in self.model
        self.model[task.id] = "pending"
        self.description[task.id] = description
        self.attempts[task.id] = 0
        self.order.append(task.id)

    @rule(
        actor=st.integers(0, ACTORS - 1),
        action=st.sampled_from(sorted(ALLOWED)),
        pick=st.integers(0, 12),
    )
    def transition(self, actor: int, action: str, pick: int) -> None:
        store = self.actors[actor]
        task_id = self.order[pick] if pick < len(self.order) else "ghost"
        state = self.model.get(task_id)
        try:
            if action == "claim":
                store.claim(task_id, assignment(attempt=self.attempts.get(task_id, 0) + 1))
            elif action == "complete":
                store.complete(task_id)
            elif action == "fail":
                store.fail(task_id, "gave up")
            elif action == "requeue":
                store.requeue(task_id, "agent vanished")
            elif action == "retry":
                store.retry(task_id)
            else:
                store.cancel(task_id)
        except TaskNotFoundError:
            assert state is None
            return
        except IllegalTransitionError as exc:
            assert state is not None
            assert state not in ALLOWED[action]
            assert exc.state == state
            return
        assert state in ALLOWED[action], f"{action} succeeded on a {state} task"
        self.model[task_id] = TARGET[action]
        if action == "claim":
            self.attempts[task_id] += 1
        if action == "retry":
            self.attempts[task_id] = 0

    @invariant()
    def every_task_in_exactly_one_state_and_complete(self) -> None:
        if not hasattr(self, "root"):
            return
        assert state_of_every_file(self.actors[0]) == self.model
        assert tmp_leftovers(self.actors[0]) == []
        counts = self.actors[1].counts()
        for state in ("pending", "assigned", "completed", "failed"):
            assert counts[state] == sum(1 for s in self.model.values() if s == state)

    @invariant()
    def content_follows_the_state(self) -> None:
        if not hasattr(self, "root"):
            return
        for state, task in self.actors[2].iter_tasks():
            assert task.description == self.description[task.id]
            assert (task.assignment is not None) == (state == "assigned")
            assert len(task.attempts) == self.attempts[task.id]


StoreMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreMachine = StoreMachine.TestCase
