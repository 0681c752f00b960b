"""Issue 4: the coordinator survives crashes, misbehaving agents, bad input, a busy
user and contention, and loses nothing. The scenarios live in ``bench/reliability.py``
(``python -m bench.reliability --size full`` runs them at full size and prints the
table of docs/reliability.md); here they run at CI size, then a few focused tests
pin the defects the scenarios found.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import filelock
import pytest

from bench import reliability
from orchestrator.config import load_config
from orchestrator.daemon import Daemon, DaemonRunningError
from orchestrator.inspect import LOCK_FILE, PID_FILE, read_pid
from tests.faults import (
    check_invariants,
    configure_faults,
    drop_task,
    git,
    task_state,
    wait_for,
)
from tests.helpers import make_repo, run_until_idle

CI = reliability.SIZES["ci"]


def _assert_clean(outcome: reliability.Outcome) -> None:
    assert outcome.report.lost == []
    assert outcome.report.duplicated == []
    assert outcome.report.orphans == []
    assert outcome.ok, outcome.report


# ----- the six scenarios, CI form ------------------------------------------------------------


@pytest.mark.slow
def test_crash_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    outcome = reliability.crash_soak(tmp_path, **CI["crash_soak"], seed=11)
    _assert_clean(outcome)
    assert outcome.notes["kills"] == CI["crash_soak"]["kills"]


@pytest.mark.slow
def test_every_agent_fault_ends_in_a_clear_state(tmp_path: Path) -> None:
    outcome = reliability.agent_faults(tmp_path, **CI["agent_faults"])
    _assert_clean(outcome)
    assert outcome.notes["rss_growth_mb"] < 64  # while 200 MB of output went by


@pytest.mark.slow
def test_bad_input_at_volume_is_rejected_unchanged_or_run(tmp_path: Path) -> None:
    outcome = reliability.bad_input(tmp_path, **CI["bad_input"])
    _assert_clean(outcome)
    assert outcome.tasks >= 1000
    assert outcome.notes["rejected"] > 500 and outcome.notes["ran"] > 50


@pytest.mark.slow
def test_beside_a_busy_user_nobody_fails(tmp_path: Path) -> None:
    outcome = reliability.busy_user(tmp_path, **CI["busy_user"])
    _assert_clean(outcome)
    assert outcome.notes["user_failures"] == 0


@pytest.mark.slow
def test_contention_one_daemon_and_every_submission_once(tmp_path: Path) -> None:
    outcome = reliability.contention(tmp_path, **CI["contention"])
    _assert_clean(outcome)
    assert outcome.tasks == 40


@pytest.mark.slow
def test_load_completes_and_merges_everything(tmp_path: Path) -> None:
    outcome = reliability.load(tmp_path, **CI["load"])
    _assert_clean(outcome)


def test_bad_input_generator_is_reproducible() -> None:
    first = reliability.generate_bad_inputs(200, seed=5)
    assert [(d.name, d.data) for d in first] == [
        (d.name, d.data) for d in reliability.generate_bad_inputs(200, seed=5)
    ]
    assert len({d.name for d in first}) == len(first)


# ----- regressions for what the scenarios found --------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = make_repo(tmp_path / "repo")
    configure_faults(root, tmp_path / "agent-state", slots=1, max_retries=0)
    return root


def test_start_waits_out_a_status_probe_of_the_lock(repo: Path) -> None:
    """'status' probes the daemon lock by taking it for an instant; a daemon starting
    in that instant used to refuse with 'already running'."""
    (repo / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    held = threading.Event()

    def probe() -> None:  # filelock's locks belong to a thread: take and drop it in one
        lock = filelock.FileLock(str(repo / LOCK_FILE), timeout=0)
        with lock:
            held.set()
            time.sleep(0.3)  # the length of the probe, the fault being injected

    prober = threading.Thread(target=probe)
    prober.start()
    held.wait(10)
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    try:
        daemon.open()
        assert read_pid(repo) == os.getpid()
    finally:
        prober.join()
        daemon.close()


def test_refusal_names_the_pid_of_a_daemon_that_just_took_the_lock(repo: Path) -> None:
    """The winner writes its pid file just after taking the lock; the loser waits for
    it instead of saying 'another process'."""
    holder = filelock.FileLock(str(repo / LOCK_FILE), timeout=0)
    (repo / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    holder.acquire()
    pid_file = repo / PID_FILE
    writer = threading.Timer(2.5, lambda: pid_file.write_text(f"{os.getpid()}\n"))
    writer.start()
    try:
        with pytest.raises(DaemonRunningError) as caught:
            Daemon(repo, load_config(repo), echo=None, install_signals=False).open()
    finally:
        writer.join()
        holder.release()
    assert caught.value.pid == os.getpid()
    assert f"(pid {os.getpid()} holds .orchestrate/daemon.lock)" in str(caught.value)


def test_result_says_where_work_was_taken_from(repo: Path) -> None:
    drop_task(repo, "moved", "other-branch")
    drop_task(repo, "headless", "detach")
    assert run_until_idle(repo) == 0
    for task_id, where in (("moved", "stray/moved"), ("headless", "a detached HEAD")):
        _, data = task_state(repo, task_id)
        assert data["result"]["reason"] == (
            f"exited 0; the agent moved its worktree to {where}; its work was taken from there"
        )
        assert data["result"]["merge"]["status"] == "merged"
    report = check_invariants(repo, ["moved", "headless"], slots=1)
    assert report.ok, report


def test_commits_left_off_the_agents_branch_fail_the_attempt_by_name(repo: Path) -> None:
    """An agent that committed on another branch and left its own unchanged used to
    complete as 'no_changes', its work silently off the target."""
    drop_task(repo, "astray", "foreign-commit")
    drop_task(repo, "fine", "ok")
    assert run_until_idle(repo) == 1
    state, data = task_state(repo, "astray")
    assert state == "failed"
    stray = git(repo, "rev-parse", "foreign/astray").strip()
    assert (
        f"the agent committed 1 commit(s) ({stray[:12]} on foreign/astray) instead of on "
        "its branch agent/astray, which it left unchanged"
    ) in data["result"]["error"]
    report = check_invariants(repo, ["astray", "fine"], slots=1, completed=["fine"])
    assert report.ok, report


def test_a_run_that_changes_nothing_is_not_blamed_for_the_slots_last_run(repo: Path) -> None:
    """The reflog of a slot's worktree holds its previous run too: an unchanged run
    started within a second of a failed one was said to have committed the failed
    run's work elsewhere, when commits were looked for by time, not from its start."""
    for n in range(3):  # one slot, taking them in turn: each quiet run follows a failed one
        drop_task(repo, f"broken{n}", "exit", submitted_at=f"2026-01-01T00:00:{2 * n:02d}.000000Z")
        drop_task(
            repo, f"quiet{n}", "idle", submitted_at=f"2026-01-01T00:00:{2 * n + 1:02d}.000000Z"
        )
    assert run_until_idle(repo) == 1  # the broken tasks fail
    for n in range(3):
        state, data = task_state(repo, f"quiet{n}")
        assert state == "completed", data.get("result")
        assert data["result"]["merge"]["status"] == "no_changes"


def test_daemon_handle_restarts_after_sigkill(repo: Path) -> None:
    from tests.faults import DaemonHandle

    drop_task(repo, "one", "ok")
    with DaemonHandle(repo) as daemon:
        first = daemon.start()
        daemon.kill()
        assert (repo / PID_FILE).exists()  # stale: its lock died with the process
        second = daemon.start()
        assert second != first and read_pid(repo) == second
        wait_for(lambda: task_state(repo, "one")[0] == "completed", timeout=60,
                   what="the task to complete")  # fmt: skip
        assert daemon.stop() == 0


def test_an_object_write_racing_the_users_gc_is_retried() -> None:
    """Beside a busy user, 'git gc' pruned an empty objects/xx directory while the
    daemon's commit-tree wrote into it, and the task failed as 'worktree broken'."""
    from orchestrator.git import _LOCK_CONTENTION

    assert _LOCK_CONTENTION.search(
        "error: unable to create temporary file: No such file or directory"
    )
