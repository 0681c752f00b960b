"""Every transition of the task store, every refusal, and intake of bad input."""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from protocol.errors import (
    IllegalTransitionError,
    LockTimeoutError,
    TaskClashError,
    TaskNotFoundError,
    TaskValidationError,
)
from protocol.store import TaskStore
from protocol.task import MAX_TASK_BYTES, Task, TaskId
from tests.protocol_helpers import STAMP, T0, assignment, drop, state_of_every_file, tmp_leftovers


def new(task_id: str = "t1", description: str = "do it") -> Task:
    return Task(id=TaskId(task_id), description=description)


def in_state(store: TaskStore, state: str, task_id: str = "t1") -> None:
    store.submit(new(task_id), now=T0)
    if state in ("assigned", "completed"):
        store.claim(task_id, assignment())
    if state == "completed":
        store.complete(task_id)
    if state == "failed":
        store.fail(task_id, "boom")


# ----- submit -----------------------------------------------------------------------------


def test_submit_publishes_a_complete_file_in_pending(store: TaskStore) -> None:
    task = store.submit(new(), now=T0)
    assert task.submitted_at == "2027-01-15T08:00:00.000000Z"
    assert store.load("t1") == ("pending", task)
    assert state_of_every_file(store) == {"t1": "pending"}
    assert tmp_leftovers(store) == []


def test_submit_without_id_generates_one(store: TaskStore) -> None:
    task = store.submit(Task(id=TaskId(""), description="d"), now=T0)
    assert task.id.startswith("20270115-080000-000000-")
    assert store.ids("pending") == [task.id]


@pytest.mark.parametrize("state", ["pending", "assigned", "completed", "failed"])
def test_submit_refuses_an_id_taken_in_any_state(store: TaskStore, state: str) -> None:
    in_state(store, state)
    before = (store.dir(state) / "t1.yaml").read_bytes()
    with pytest.raises(TaskClashError) as info:
        store.submit(new(description="other"), now=T0)
    assert str(info.value) == (
        f"task id 't1' is already taken by tasks/{state}/t1.yaml; the new task was not "
        "submitted (give it another id: ids are unique across pending, assigned, completed "
        "and failed)"
    )
    assert (store.dir(state) / "t1.yaml").read_bytes() == before
    assert tmp_leftovers(store) == []


def test_submit_refuses_an_invalid_task_before_writing(store: TaskStore) -> None:
    with pytest.raises(TaskValidationError) as info:
        store.submit(new(description="  "), now=T0)
    assert str(info.value) == (
        "tasks/pending/t1.yaml, line 2, field 'description': is empty "
        "(say what the agent should do)"
    )
    assert store.counts()["pending"] == 0
    assert tmp_leftovers(store) == []


def test_submit_refuses_a_hostile_id(store: TaskStore) -> None:
    with pytest.raises(TaskValidationError, match=re.escape("'../x' is not a valid task id")):
        store.submit(new("../x"), now=T0)
    assert not (store.tasks_dir / "x.yaml").exists()


def test_submit_without_hard_links_still_refuses_a_clash(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    store.submit(new(), now=T0)
    with pytest.raises(TaskClashError):
        store.submit(new(description="other"), now=T0)
    assert store.load("t1")[1].description == "do it"
    assert tmp_leftovers(store) == []


# ----- transitions ------------------------------------------------------------------------


def test_claim_moves_to_assigned_and_records_the_attempt(store: TaskStore) -> None:
    store.submit(new(), now=T0)
    task = store.claim("t1", assignment())
    state, loaded = store.load("t1")
    assert state == "assigned"
    assert loaded == task
    assert loaded.assignment == assignment()
    assert [(a.number, a.agent_id, a.started_at) for a in loaded.attempts] == [
        (1, "claude-1", STAMP)
    ]


def test_update_rewrites_an_assigned_task_in_place(store: TaskStore) -> None:
    in_state(store, "assigned")

    def beat(task: Task) -> None:
        assert task.assignment is not None
        task.assignment.heartbeat_at = "2027-01-15T08:01:00.000000Z"

    store.update("t1", beat)
    state, task = store.load("t1")
    assert state == "assigned"
    assert task.assignment is not None
    assert task.assignment.heartbeat_at == "2027-01-15T08:01:00.000000Z"


def test_update_never_moves_a_task_back(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: update() chose its target before taking the lock, so a task completed
    meanwhile by another process was moved from completed back to assigned."""
    in_state(store, "assigned")
    other = TaskStore(store.root)
    real_lock = store.lock

    def lock_after_someone_completes():  # type: ignore[no-untyped-def]
        other.complete("t1")
        return real_lock()

    monkeypatch.setattr(store, "lock", lock_after_someone_completes)
    store.update("t1", lambda t: None, states=("assigned", "completed"))
    assert store.locate("t1") == ("completed", store.dir("completed") / "t1.yaml")


def test_annotate_pending(store: TaskStore) -> None:
    store.submit(new(), now=T0)

    def why(task: Task) -> None:
        task.waiting_reason = "waits for schema"

    store.annotate_pending("t1", why)
    assert store.load("t1") == ("pending", store.load("t1")[1])
    assert store.load("t1")[1].waiting_reason == "waits for schema"


def test_complete(store: TaskStore) -> None:
    in_state(store, "assigned")
    store.complete("t1", lambda t: setattr(t, "waiting_reason", None))
    state, task = store.load("t1")
    assert state == "completed"
    assert task.assignment is None
    assert len(task.attempts) == 1


@pytest.mark.parametrize("state", ["pending", "assigned"])
def test_fail_records_the_reason(store: TaskStore, state: str) -> None:
    in_state(store, state)
    store.fail("t1", "the agent gave up")
    loaded_state, task = store.load("t1")
    assert loaded_state == "failed"
    assert task.assignment is None
    assert task.result is not None
    assert task.result.error == "the agent gave up"


def test_requeue_keeps_the_attempt(store: TaskStore) -> None:
    in_state(store, "assigned")
    store.requeue("t1", "rate limited", not_before="2027-01-15T09:00:00.000000Z")
    state, task = store.load("t1")
    assert state == "pending"
    assert task.assignment is None
    assert (task.waiting_reason, task.not_before) == ("rate limited", "2027-01-15T09:00:00.000000Z")
    assert len(task.attempts) == 1
    store.claim("t1", assignment(attempt=2))
    assert [a.number for a in store.load("t1")[1].attempts] == [1, 2]


def test_retry_resets_attempts_and_keeps_the_old_ones(store: TaskStore) -> None:
    in_state(store, "assigned")
    store.fail("t1", "boom")
    store.retry("t1")
    state, task = store.load("t1")
    assert state == "pending"
    assert task.attempts == []
    assert [a.number for a in task.previous_attempts] == [1]
    assert task.result is None


@pytest.mark.parametrize("state", ["pending", "assigned"])
def test_cancel(store: TaskStore, state: str) -> None:
    in_state(store, state)
    store.cancel("t1")
    loaded_state, task = store.load("t1")
    assert loaded_state == "failed"
    assert task.result is not None
    assert task.result.error == "cancelled by the user"


ACTIONS: dict[str, tuple[tuple[str, ...], Callable[[TaskStore], object]]] = {
    "claim": (("pending",), lambda s: s.claim("t1", assignment())),
    "update": (("assigned",), lambda s: s.update("t1", lambda t: None)),
    "annotate": (("pending",), lambda s: s.annotate_pending("t1", lambda t: None)),
    "complete": (("assigned",), lambda s: s.complete("t1")),
    "fail": (("pending", "assigned"), lambda s: s.fail("t1", "x")),
    "requeue": (("assigned",), lambda s: s.requeue("t1", "x")),
    "retry": (("failed",), lambda s: s.retry("t1")),
    "cancel": (("pending", "assigned"), lambda s: s.cancel("t1")),
}
ILLEGAL = [
    (action, state)
    for action, (allowed, _) in ACTIONS.items()
    for state in ("pending", "assigned", "completed", "failed")
    if state not in allowed
]


@pytest.mark.parametrize(("action", "state"), ILLEGAL)
def test_illegal_transition_names_the_state(store: TaskStore, action: str, state: str) -> None:
    in_state(store, state)
    before = (store.dir(state) / "t1.yaml").read_bytes()
    allowed, call = ACTIONS[action]
    with pytest.raises(IllegalTransitionError) as info:
        call(store)
    assert str(info.value) == (
        f"cannot {action} task 't1': it is {state}, and {action} applies only to "
        f"{' or '.join(allowed)} tasks"
    )
    assert info.value.state == state
    assert (store.dir(state) / "t1.yaml").read_bytes() == before


@pytest.mark.parametrize("action", list(ACTIONS))
def test_transition_of_a_missing_task(store: TaskStore, action: str) -> None:
    with pytest.raises(TaskNotFoundError) as info:
        ACTIONS[action][1](store)
    assert str(info.value) == (
        "no task 't1' in tasks/pending, assigned, completed or failed "
        "(run 'orchestrate tasks' to list them)"
    )


def test_a_failing_mutate_leaves_the_task_where_it_was(store: TaskStore) -> None:
    """Regression: the file was renamed into completed/ before mutate ran, so an
    exception in mutate left a completed task without its result."""
    in_state(store, "assigned")
    before = (store.dir("assigned") / "t1.yaml").read_bytes()

    def broken(task: Task) -> None:
        raise RuntimeError("merge crashed")

    with pytest.raises(RuntimeError):
        store.complete("t1", broken)
    assert (store.dir("assigned") / "t1.yaml").read_bytes() == before
    assert state_of_every_file(store) == {"t1": "assigned"}
    assert tmp_leftovers(store) == []


def test_a_mutate_that_breaks_a_rule_is_refused(store: TaskStore) -> None:
    in_state(store, "assigned")
    with pytest.raises(TaskValidationError, match="field 'priority'"):
        store.complete("t1", lambda t: setattr(t, "priority", "urgent"))
    assert store.locate("t1") is not None
    assert store.load("t1")[0] == "assigned"


def test_a_failed_write_leaves_the_task_where_it_was(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_state(store, "assigned")
    before = (store.dir("assigned") / "t1.yaml").read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        store.complete("t1")
    monkeypatch.undo()
    assert (store.dir("assigned") / "t1.yaml").read_bytes() == before
    assert tmp_leftovers(store) == []


def test_an_id_from_a_command_line_never_becomes_a_path(store: TaskStore) -> None:
    """Regression: locate('../x') looked at tasks/x.yaml, so 'cancel ../x' moved a
    file from outside the state directories into tasks/failed."""
    outside = store.tasks_dir / "x.yaml"
    outside.write_bytes(b"description: not a task\n")
    for call in (lambda: store.load("../x"), lambda: store.cancel("../x")):
        with pytest.raises(TaskValidationError) as info:
            call()
        assert str(info.value).startswith("'../x' is not a valid task id: it contains '/'")
    assert outside.read_bytes() == b"description: not a task\n"
    assert store.counts()["failed"] == 0


def test_lock_timeout_says_who_to_suspect(store: TaskStore) -> None:
    in_state(store, "pending")
    impatient = TaskStore(store.root, lock_timeout=0.2)
    with store.lock(), pytest.raises(LockTimeoutError) as info:
        impatient.claim("t1", assignment())
    assert str(info.value) == (
        f"could not take the task lock {store.lock_path} within 0.2s; another orchestrate "
        "process holds it (is one hung? see 'orchestrate status')"
    )
    assert store.load("t1")[0] == "pending"


# ----- intake of bad input ----------------------------------------------------------------

FOOTER = (
    "\n\nThe file was moved unchanged to tasks/failed/{name}.\n"
    "Fix it, then submit it again:\n"
    "  mv tasks/failed/{name} tasks/pending/{name} && rm tasks/failed/{name}.error\n"
)

BAD_INPUT = [
    pytest.param(
        b"description: [oops\n",
        "tasks/pending/bad.yaml, line 2: this is not valid YAML: did not find expected ',' or "
        "']' (fix the YAML syntax and submit the file again)",
        id="invalid-yaml",
    ),
    pytest.param(
        b"- one\n- two\n",
        "tasks/pending/bad.yaml: a task file must be a YAML mapping of fields, but this one "
        "holds a list (start with 'description: ...')",
        id="not-a-mapping",
    ),
    pytest.param(
        b"priority: high\n",
        "tasks/pending/bad.yaml, field 'description': is required but missing "
        "(add 'description: what the agent should do')",
        id="missing-description",
    ),
    pytest.param(
        b"description: do it\nmax_retries: three\n",
        "tasks/pending/bad.yaml, line 2, field 'max_retries': must be a whole number 0 or "
        "more, not 'three' (for example 'max_retries: 2')",
        id="wrong-type",
    ),
    pytest.param(
        b"description: do it\npriority: asap\n",
        "tasks/pending/bad.yaml, line 2, field 'priority': 'asap' is not a priority "
        "(use high, normal or low)",
        id="unknown-priority",
    ),
    pytest.param(
        b"id: a..b\ndescription: do it\n",
        "tasks/pending/bad.yaml, line 1, field 'id': 'a..b' is not a valid task id: it "
        "contains '..'; an id is 1 to 64 ASCII letters, digits, '.', '_' or '-', starts with "
        "a letter or digit, and has no '..' (for example 'id: add-auth')",
        id="invalid-id",
    ),
    pytest.param(
        b"description: do it\ndepends_on: [bad]\n",
        "tasks/pending/bad.yaml, line 2, field 'depends_on': the task depends on itself "
        "('bad') (remove 'bad' from depends_on)",
        id="depends-on-itself",
    ),
    pytest.param(
        bytes(range(256)) * 4,
        "tasks/pending/bad.yaml: the file is not UTF-8 text (byte 128 is 0x80) "
        "(save the task as UTF-8 YAML)",
        id="binary-junk",
    ),
    pytest.param(
        b"\x00\x01\x02description: x",
        "tasks/pending/bad.yaml: the file contains NUL bytes, so it is binary, not YAML text "
        "(save the task as UTF-8 YAML)",
        id="nul-bytes",
    ),
    pytest.param(
        b"",
        "tasks/pending/bad.yaml: the file is empty (a task needs at least 'description: ...')",
        id="empty",
    ),
    pytest.param(
        b"description: " + b"x" * MAX_TASK_BYTES,
        "tasks/pending/bad.yaml: the file is larger than the limit of 1048576 bytes "
        "(put long material in a file and name it in context_files)",
        id="over-1MiB",
    ),
    pytest.param(
        b"[" * 100_000,
        "tasks/pending/bad.yaml: the YAML is nested more than 100 levels deep "
        "(a task needs only a few levels)",
        id="deep-nesting-crashed-libyaml",
    ),
]


def assert_rejected(store: TaskStore, name: str, data: bytes, message: str) -> None:
    assert not os.path.lexists(store.dir("pending") / name)
    assert (store.dir("failed") / name).read_bytes() == data
    error = (store.dir("failed") / f"{name}.error").read_text()
    assert error == message + FOOTER.format(name=name)


@pytest.mark.parametrize(("data", "message"), BAD_INPUT)
def test_bad_input_is_moved_byte_for_byte_with_an_explanation(
    store: TaskStore, data: bytes, message: str
) -> None:
    drop(store, "bad.yaml", data)
    report = store.intake(now=T0)
    assert report.rejected == [("bad.yaml", message)]
    assert report.ready == []
    assert_rejected(store, "bad.yaml", data, message)
    assert [(r.name, r.message) for r in store.rejected()] == [
        ("bad.yaml", message + FOOTER.format(name="bad.yaml"))
    ]
    assert store.ids("failed") == []  # a rejected input is not a task
    assert store.counts() == {"pending": 0, "assigned": 0, "completed": 0, "failed": 1}
    assert tmp_leftovers(store) == []


def test_duplicate_id_within_pending(store: TaskStore) -> None:
    drop(store, "a.yaml", b"description: first\n")
    drop(store, "b.yaml", b"id: a\ndescription: second\n")
    report = store.intake(now=T0)
    message = (
        "tasks/pending/b.yaml: id 'a' is already used by tasks/pending/a.yaml "
        "(give one of them another id)"
    )
    assert [t.id for t in report.ready] == ["a"]
    assert report.rejected == [("b.yaml", message)]
    assert_rejected(store, "b.yaml", b"id: a\ndescription: second\n", message)


@pytest.mark.parametrize("state", ["assigned", "completed", "failed"])
def test_duplicate_id_across_states(store: TaskStore, state: str) -> None:
    in_state(store, state, "dup")
    data = b"description: again\n"
    (store.dir("pending") / "dup.yaml").unlink(missing_ok=True)
    drop(store, "other.yaml", b"id: dup\n" + data)
    report = store.intake(now=T0)
    message = (
        f"tasks/pending/other.yaml: id 'dup' is already taken by tasks/{state}/dup.yaml "
        "(give the task another id)"
    )
    assert report.rejected == [("other.yaml", message)]
    assert_rejected(store, "other.yaml", b"id: dup\n" + data, message)
    assert store.load("dup")[0] == state


def test_a_rejected_file_keeps_its_id_until_removed(store: TaskStore) -> None:
    """Regression: a task whose id matched a rejected input in tasks/failed could be
    submitted, and its later fail() could not be stored (it would overwrite the input)."""
    drop(store, "x.yaml", b"description: [\n")
    store.intake(now=T0)
    with pytest.raises(TaskClashError, match=re.escape("already taken by tasks/failed/x.yaml")):
        store.submit(new("x"), now=T0)
    drop(store, "x.yaml", b"description: fixed\n")
    message = (
        "tasks/pending/x.yaml: id 'x' is already taken by tasks/failed/x.yaml, an earlier "
        "file that was rejected (delete tasks/failed/x.yaml and tasks/failed/x.yaml.error, "
        "then submit this file again)"
    )
    assert store.intake(now=T0).rejected == [("x.yaml", message)]
    assert (store.dir("failed") / "x.yaml.2").read_bytes() == b"description: fixed\n"
    assert (store.dir("failed") / "x.yaml").read_bytes() == b"description: [\n"


def test_the_suggested_fix_resubmits(store: TaskStore) -> None:
    drop(store, "x.yaml", b"description: [\n")
    store.intake(now=T0)
    os.rename(store.dir("failed") / "x.yaml", store.dir("pending") / "x.yaml")
    os.unlink(store.dir("failed") / "x.yaml.error")
    drop(store, "x.yaml", b"description: fixed\n")
    assert [t.id for t in store.intake(now=T0).ready] == ["x"]


def test_symlink_is_rejected_never_followed(store: TaskStore, tmp_path: Path) -> None:
    target = tmp_path / "secret.yaml"
    target.write_bytes(b"description: from outside\n")
    os.utime(target, (T0 - 600, T0 - 600))
    before = target.stat()
    (store.dir("pending") / "link.yaml").symlink_to(target)
    report = store.intake(now=T0)
    message = (
        "tasks/pending/link.yaml is a symbolic link; links are never followed "
        "(copy the task file itself into tasks/pending/)"
    )
    assert report.rejected == [("link.yaml", message)]
    moved = store.dir("failed") / "link.yaml"
    assert moved.is_symlink() and os.readlink(moved) == str(target)
    after = target.stat()
    assert target.read_bytes() == b"description: from outside\n"
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (
        before.st_mtime_ns,
        before.st_ino,
        before.st_size,
    )
    assert (store.dir("failed") / "link.yaml.error").read_text() == message + FOOTER.format(
        name="link.yaml"
    )


def test_symlink_to_a_pipe_never_blocks_a_listing(store: TaskStore, tmp_path: Path) -> None:
    """Regression: load/iter_tasks opened symlinks and pipes in the state directories:
    a FIFO made the reader block forever, a link raised a bare OSError."""
    os.mkfifo(tmp_path / "fifo")
    (store.dir("pending") / "link.yaml").symlink_to(tmp_path / "fifo")
    os.mkfifo(store.dir("pending") / "pipe.yaml")
    assert list(store.iter_tasks()) == []
    with pytest.raises(TaskValidationError) as info:
        store.load("pipe")
    assert str(info.value) == (
        "tasks/pending/pipe.yaml: is a named pipe, not a regular file (put a task file there)"
    )
    with pytest.raises(TaskValidationError) as info:
        store.load("link")
    assert str(info.value) == (
        "tasks/pending/link.yaml: is a symbolic link; links are never followed "
        "(put the task file itself there)"
    )
    report = store.intake(now=T0)
    assert sorted(name for name, _ in report.rejected) == ["link.yaml", "pipe.yaml"]
    assert dict(report.rejected)["pipe.yaml"] == (
        "tasks/pending/pipe.yaml is a named pipe, not a regular file "
        "(put task files, not a named pipe, into tasks/pending/)"
    )


def test_directory_is_rejected(store: TaskStore) -> None:
    (store.dir("pending") / "sub.yaml").mkdir()
    (store.dir("pending") / "sub.yaml" / "inner").write_text("kept")
    report = store.intake(now=T0)
    assert report.rejected == [
        (
            "sub.yaml",
            "tasks/pending/sub.yaml is a directory, not a regular file "
            "(put task files, not a directory, into tasks/pending/)",
        )
    ]
    assert (store.dir("failed") / "sub.yaml" / "inner").read_text() == "kept"


def test_a_name_without_yaml_is_rejected_once_settled(store: TaskStore) -> None:
    drop(store, "notes.txt", b"description: hi\n", mtime=T0)
    assert store.intake(now=T0).deferred == ["notes.txt"]
    report = store.intake(now=T0 + 5)
    assert report.rejected == [
        (
            "notes.txt",
            "tasks/pending/notes.txt does not end in .yaml or .yml "
            "(rename it to <id>.yaml and submit it again)",
        )
    ]


@pytest.mark.parametrize(
    "name", [".#t.yaml", "t.yaml~", ".t.yaml.swp", ".hidden", "#t.yaml#", "t.yaml.tmp", "t.part"]
)
def test_editor_leftovers_and_hidden_files_are_ignored(store: TaskStore, name: str) -> None:
    drop(store, name, b"\x00 not yaml")
    report = store.intake(now=T0)
    assert (report.ready, report.rejected, report.deferred) == ([], [], [])
    assert (store.dir("pending") / name).exists()
    assert store.counts()["pending"] == 0


def test_a_file_still_being_written_is_deferred(store: TaskStore) -> None:
    path = drop(store, "t.yaml", b"description: [half", mtime=T0 - 0.2)
    report = store.intake(now=T0)
    assert (report.deferred, report.rejected) == (["t.yaml"], [])
    assert path.exists()
    drop(store, "t.yaml", b"description: half written\n", mtime=T0 - 0.1)  # the writer is done
    assert [t.description for t in store.intake(now=T0).ready] == ["half written"]


def test_a_stale_invalid_file_is_rejected_after_the_settle_window(store: TaskStore) -> None:
    drop(store, "t.yaml", b"description: [half", mtime=T0 - 0.2)
    assert store.intake(now=T0).deferred == ["t.yaml"]
    assert [n for n, _ in store.intake(now=T0 + 1.5).rejected] == ["t.yaml"]


def test_a_file_with_an_mtime_in_the_future_is_not_deferred_forever(store: TaskStore) -> None:
    drop(store, "t.yaml", b"description: [", mtime=T0 + 3600)
    assert [n for n, _ in store.intake(now=T0).rejected] == ["t.yaml"]


def test_valid_files_are_adopted_under_their_id(store: TaskStore) -> None:
    drop(store, "a.yml", b"description: one\n")
    drop(store, "whatever.yaml", b"id: b\ndescription: two\n")
    report = store.intake(now=T0)
    assert sorted(t.id for t in report.ready) == ["a", "b"]
    assert sorted(os.listdir(store.dir("pending"))) == ["a.yaml", "b.yaml"]
    assert store.load("a")[1].submitted_at is None  # a hand-dropped file is not rewritten


def test_unknown_keys_are_kept_and_warned_about_once(store: TaskStore) -> None:
    drop(store, "t.yaml", b"description: d\nowner: ana\n")
    report = store.intake(now=T0)
    assert report.warnings == [
        "tasks/pending/t.yaml: unknown field 'owner' kept as it is (a newer orchestrate may "
        "know it; otherwise check its spelling)"
    ]
    assert report.ready[0].extra == {"owner": "ana"}
    assert store.intake(now=T0).warnings == []
    store.claim("t", assignment())
    assert store.load("t")[1].extra == {"owner": "ana"}


def test_intake_of_named_files_only(store: TaskStore) -> None:
    drop(store, "a.yaml", b"description: one\n")
    drop(store, "b.yaml", b"description: [\n")
    report = store.intake(now=T0, names={"a.yaml"})
    assert [t.id for t in report.ready] == ["a"]
    assert (store.dir("pending") / "b.yaml").exists()


# ----- reading ----------------------------------------------------------------------------


def test_counts_reads_directory_entries_only(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        store.submit(new(f"t{i}"), now=T0)
    store.claim("t0", assignment())
    store.fail("t1", "x")
    drop(store, "junk.yaml", b"[")
    store.intake(now=T0)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("counts() opened or stat'ed a file")

    for module, name in [
        (builtins, "open"),
        (io, "open"),
        (os, "open"),
        (os, "stat"),
        (os, "lstat"),
        (yaml, "load"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    counts = store.counts()
    monkeypatch.undo()
    assert counts == {"pending": 1, "assigned": 1, "completed": 0, "failed": 2}


def test_ids_and_listing(store: TaskStore) -> None:
    for i in range(3):
        store.submit(new(f"t{i}"), now=T0)
    store.claim("t1", assignment())
    (store.dir("completed") / "not an id.yaml").write_text("description: x\n")
    assert store.ids("pending") == ["t0", "t2"]
    assert store.ids("completed") == []  # a file whose name is not an id is not a task
    assert [(s, t.id) for s, t in store.iter_tasks()] == [
        ("pending", "t0"),
        ("pending", "t2"),
        ("assigned", "t1"),
    ]


def test_listing_skips_a_bad_pending_file_but_reports_a_corrupt_state(store: TaskStore) -> None:
    store.submit(new("good"), now=T0)
    drop(store, "bad.yaml", b"[")
    assert [t.id for _, t in store.iter_tasks()] == ["good"]
    (store.dir("completed") / "broken.yaml").write_bytes(b"description: [")
    with pytest.raises(TaskValidationError, match=re.escape("tasks/completed/broken.yaml, line 2")):
        list(store.iter_tasks())


# ----- housekeeping -----------------------------------------------------------------------


def test_sweep_tmp_removes_what_dead_writers_left(store: TaskStore) -> None:
    dead = store.tmp_dir / "999999999.1.aa.tmp"  # no such pid
    mine = store.tmp_dir / f"{os.getpid()}.1.bb.tmp"
    old_foreign = store.tmp_dir / "editor-junk"
    young_foreign = store.tmp_dir / "fresh-junk"
    for path in (dead, mine, old_foreign, young_foreign):
        path.write_bytes(b"partial")
    os.utime(old_foreign, (T0 - 7200, T0 - 7200))
    os.utime(young_foreign, (T0, T0))
    os.utime(mine, (T0, T0))
    assert sorted(store.sweep_tmp(now=T0)) == ["999999999.1.aa.tmp", "editor-junk"]
    assert tmp_leftovers(store) == sorted([mine.name, young_foreign.name])
