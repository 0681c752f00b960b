"""End-to-end: the daemon with fake agents that are real processes, in real repos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.config import load_config
from orchestrator.daemon import Daemon, DaemonRunningError
from protocol.task import parse_iso
from tests.helpers import (
    add_task,
    configure,
    git,
    load,
    make_repo,
    run_until_idle,
    wait_for,
    write_agent,
)

WRITE_FILE = """
name = prompt.split()[0]
pathlib.Path(name).write_text(task + "\\n")
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_parallel_agents_each_merge_their_file(repo: Path, tmp_path: Path) -> None:
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    # each agent waits until two agents are running at once: only parallel runs finish
    agent = write_agent(
        tmp_path,
        f"""
        pathlib.Path({str(rendezvous)!r}, task).touch()
        deadline = time.time() + 20
        while len(os.listdir({str(rendezvous)!r})) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert len(os.listdir({str(rendezvous)!r})) >= 2, "ran alone"
        """,
        WRITE_FILE,
    )
    configure(repo, {"fake": {"command": agent, "max_instances": 2}})
    for n in range(4):
        add_task(repo, f"t{n}", f"file{n}.txt")
    assert run_until_idle(repo) == 0
    files = git(repo, "ls-tree", "--name-only", "orchestrate/integration").split()
    assert {f"file{n}.txt" for n in range(4)} <= set(files)
    for n in range(4):
        state, data = load(repo, f"t{n}")
        assert state == "completed"
        assert data["result"]["merge"]["status"] == "merged"
        assert data["result"]["files_changed"] == [f"file{n}.txt"]
        assert data["result"]["branch"] == f"agent/t{n}"
        assert git(repo, "show", f"agent/t{n}:file{n}.txt") == f"t{n}"


def test_dependent_branch_contains_its_dependency(repo: Path, tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        """
        if task == "second":
            assert pathlib.Path("first.txt").exists(), "dependency's change missing"
            assert "Output of task first" in prompt
        """,
        WRITE_FILE,
    )
    configure(repo, {"fake": {"command": agent, "max_instances": 2}})
    add_task(repo, "second", "second.txt", depends_on=["first"])
    add_task(repo, "first", "first.txt")
    assert run_until_idle(repo) == 0
    assert git(repo, "show", "agent/second:first.txt") == "first"


def test_conflict_is_flagged_with_paths_and_target_untouched(repo: Path, tmp_path: Path) -> None:
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    agent = write_agent(
        tmp_path,
        f"""
        pathlib.Path({str(rendezvous)!r}, task).touch()
        while len(os.listdir({str(rendezvous)!r})) < 2:
            time.sleep(0.01)
        if task == "b":
            time.sleep(0.3)
        pathlib.Path("README.md").write_text("# Title by " + task + "\\n")
        """,
    )
    configure(repo, {"fake": {"command": agent, "max_instances": 2, "timeout_minutes": 1}})
    add_task(repo, "a", "edit readme")
    add_task(repo, "b", "edit readme too")
    assert run_until_idle(repo) == 1  # one task is not merged
    _, a = load(repo, "a")
    _, b = load(repo, "b")
    assert a["result"]["merge"]["status"] == "merged"
    assert b["result"]["merge"]["status"] == "conflict"
    assert b["result"]["merge"]["conflicts"] == ["README.md"]
    assert git(repo, "rev-parse", "orchestrate/integration") == a["result"]["merge"]["commit"]
    assert git(repo, "show", "agent/b:README.md") == "# Title by b"


def test_checked_out_target_is_never_moved(repo: Path, tmp_path: Path) -> None:
    agent = write_agent(tmp_path, WRITE_FILE)
    configure(repo, {"fake": {"command": agent}}, merge={"target": "main"})
    before = git(repo, "rev-parse", "main")
    add_task(repo, "t", "new.txt")
    assert run_until_idle(repo) == 1
    _, data = load(repo, "t")
    assert data["result"]["merge"]["status"] == "blocked"
    assert str(repo) in data["result"]["merge"]["message"]
    assert git(repo, "rev-parse", "main") == before


def test_no_changes_counts_as_done(repo: Path, tmp_path: Path) -> None:
    configure(repo, {"fake": {"command": write_agent(tmp_path, "pass\n")}})
    add_task(repo, "idle", "do nothing")
    assert run_until_idle(repo) == 0
    _, data = load(repo, "idle")
    assert data["result"]["merge"]["status"] == "no_changes"


def test_failed_attempt_is_retried_and_its_work_kept(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "failed-once"
    agent = write_agent(
        tmp_path,
        f"""
        pathlib.Path("attempt.txt").write_text(str(os.getpid()))
        if not pathlib.Path({str(marker)!r}).exists():
            pathlib.Path({str(marker)!r}).touch()
            print("boom"); sys.exit(3)
        """,
    )
    configure(repo, {"fake": {"command": agent}}, defaults={"max_retries": 2})
    add_task(repo, "flaky", "try twice")
    assert run_until_idle(repo) == 0
    _, data = load(repo, "flaky")
    first, second = data["attempts"]
    assert first["outcome"] == "failed" and first["exit_code"] == 3
    assert second["outcome"] == "succeeded"
    # the failed attempt's uncommitted file is kept on a ref, never thrown away
    assert first["saved_ref"] == "refs/orchestrate/attempts/flaky/1"
    assert git(repo, "show", f"{first['saved_ref']}:attempt.txt")


def test_gives_up_after_max_retries_with_output_tail(repo: Path, tmp_path: Path) -> None:
    agent = write_agent(tmp_path, "print('the model said no'); sys.exit(7)\n")
    configure(repo, {"fake": {"command": agent}}, defaults={"max_retries": 1})
    add_task(repo, "doomed", "never works")
    assert run_until_idle(repo) == 1
    state, data = load(repo, "doomed")
    assert state == "failed"
    assert len(data["attempts"]) == 2
    assert "exited with code 7" in data["result"]["error"]
    assert "the model said no" in data["result"]["error"]


def test_timeout_kills_the_whole_process_tree(repo: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    agent = write_agent(
        tmp_path,
        f"""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        pathlib.Path({str(pids)!r}).write_text(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
        """,
    )
    configure(repo, {"fake": {"command": agent, "timeout_minutes": 0.02}})
    add_task(repo, "hang", "hangs forever")
    assert run_until_idle(repo) == 1
    state, data = load(repo, "hang")
    assert state == "failed"
    assert "timed out after" in data["result"]["error"]
    for pid in map(int, pids.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_task_text_reaches_the_agent_verbatim_and_runs_nothing(repo: Path, tmp_path: Path) -> None:
    received = tmp_path / "received.txt"
    agent = write_agent(tmp_path, f"pathlib.Path({str(received)!r}).write_text(sys.argv[-1])\n")
    configure(repo, {"fake": {"command": agent}})
    hostile = 'x"; touch pwned; echo "\n$(touch pwned2)\n`touch pwned3`\n\'; rm -rf / #'
    add_task(repo, "hostile", hostile)
    assert run_until_idle(repo) == 0
    assert received.read_text() == hostile + "\n"
    for place in (repo, tmp_path, Path.cwd()):
        assert not list(place.rglob("pwned*"))


def test_unknown_agent_type_is_rejected_with_the_configured_list(
    repo: Path, tmp_path: Path
) -> None:
    configure(repo, {"fake": {"command": write_agent(tmp_path, "pass\n")}})
    add_task(repo, "typo", "x", agent="claud")
    assert run_until_idle(repo) == 1
    state, data = load(repo, "typo")
    assert state == "failed"
    assert data["result"]["error"] == "agent type 'claud' is not configured (configured: fake)"


def test_cycles_and_missing_dependencies_wait_with_reasons(repo: Path, tmp_path: Path) -> None:
    configure(repo, {"fake": {"command": write_agent(tmp_path, "pass\n")}})
    add_task(repo, "a", "x", depends_on=["b"])
    add_task(repo, "b", "x", depends_on=["a"])
    add_task(repo, "orphan", "x", depends_on=["ghost"])
    assert run_until_idle(repo) == 1  # exits instead of hanging
    from orchestrator.inspect import task_rows

    rows = {r["id"]: r for r in task_rows(repo, load_config(repo))}
    assert "dependency cycle" in rows["a"]["waiting_on"]
    assert rows["orphan"]["waiting_on"] == "depends on 'ghost', which does not exist"


def test_second_daemon_refuses_and_names_the_pid(repo: Path, tmp_path: Path) -> None:
    configure(repo, {"fake": {"command": write_agent(tmp_path, "pass\n")}})
    first = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    first.open()
    try:
        second = Daemon(repo, load_config(repo), echo=None, install_signals=False)
        with pytest.raises(DaemonRunningError) as info:
            second.open()
        assert f"pid {os.getpid()}" in str(info.value)
        second.close()
    finally:
        first.close()


def test_user_checkout_is_byte_identical_after_a_run(repo: Path, tmp_path: Path) -> None:
    (repo / "README.md").write_text("# Project\n\nstaged edit\n")
    git(repo, "add", "README.md")
    (repo / "README.md").write_text("# Project\n\nstaged edit\nunstaged edit\n")
    (repo / "scratch.txt").write_text("untracked\n")

    def snapshot() -> dict[str, bytes]:
        out = {
            "HEAD": (repo / ".git" / "HEAD").read_bytes(),
            "main": git(repo, "rev-parse", "main").encode(),
            "index": (repo / ".git" / "index").read_bytes(),
            "status": git(repo, "status", "--porcelain").encode(),
        }
        for path in repo.rglob("*"):
            rel = path.relative_to(repo)
            if rel.parts[0] in (".git", ".orchestrate", "tasks", "context") or path.is_dir():
                continue
            out[str(rel)] = path.read_bytes()
        return out

    agent = write_agent(tmp_path, 'pathlib.Path("README.md").write_text("agent\\n")\n', WRITE_FILE)
    configure(repo, {"fake": {"command": agent, "max_instances": 2}})
    before = snapshot()
    for n in range(3):
        add_task(repo, f"t{n}", f"f{n}.txt")
    run_until_idle(repo)
    assert snapshot() == before


def test_restart_requeues_and_keeps_uncommitted_work(repo: Path, tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        """
        pathlib.Path("halfway.txt").write_text("work in progress\\n")
        if not os.environ.get("SECOND"):
            pathlib.Path(os.environ["ORCHESTRATE_CONTEXT_DIR"], "ready").touch()
            time.sleep(600)
        """,
    )
    configure(repo, {"fake": {"command": agent}})
    add_task(repo, "crashy", "x")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "-C", str(repo), "start"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (repo / "context" / "ready").exists(), what="the agent to start")
        # the daemon records the pid just after the spawn: the agent can be first
        agent_pid = wait_for(
            lambda: (load(repo, "crashy")[1].get("assignment") or {}).get("pid"),
            what="the daemon to record the agent's pid",
        )
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert psutil.pid_exists(agent_pid)  # orphaned by the crash
    configure(repo, {"fake": {"command": agent, "env": {"SECOND": "1"}}})
    restarted = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    restarted.open()
    try:
        state, data = load(repo, "crashy")
        assert state == "pending"
        assert data["attempts"][0]["outcome"] == "interrupted"
        ref = data["attempts"][0]["saved_ref"]
        assert git(repo, "show", f"{ref}:halfway.txt") == "work in progress"
        wait_for(
            lambda: (
                not psutil.pid_exists(agent_pid)
                or psutil.Process(agent_pid).status() == psutil.STATUS_ZOMBIE
            ),
            what="the orphan agent to be killed",
        )
    finally:
        restarted.close()
    assert run_until_idle(repo) == 0


def _start_daemon(repo: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "-C", str(repo), "start"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_warm_stop_lets_the_agent_finish(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    agent = write_agent(
        tmp_path,
        f"""
        pathlib.Path(os.environ["ORCHESTRATE_CONTEXT_DIR"], "running").touch()
        while not pathlib.Path({str(gate)!r}).exists():
            time.sleep(0.01)
        """,
        WRITE_FILE,
    )
    configure(repo, {"fake": {"command": agent}})
    add_task(repo, "slow", "slow.txt")
    daemon = _start_daemon(repo)
    try:
        wait_for(lambda: (repo / "context" / "running").exists(), what="agent start")
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "-C", str(repo), "stop"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "after running agents finish" in result.stdout
        gate.touch()
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    state, data = load(repo, "slow")
    assert state == "completed"
    assert data["result"]["merge"]["status"] == "merged"


def test_stop_now_kills_agents_keeps_work_and_requeues(repo: Path, tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        """
        pathlib.Path("partial.txt").write_text("half\\n")
        pathlib.Path(os.environ["ORCHESTRATE_CONTEXT_DIR"], "running").touch()
        time.sleep(600)
        """,
    )
    configure(repo, {"fake": {"command": agent}})
    add_task(repo, "long", "x")
    daemon = _start_daemon(repo)
    try:
        wait_for(lambda: (repo / "context" / "running").exists(), what="agent start")
        agent_pid = wait_for(
            lambda: (load(repo, "long")[1].get("assignment") or {}).get("pid"),
            what="the daemon to record the agent's pid",
        )
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "-C", str(repo), "stop", "--now"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        daemon.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert not psutil.pid_exists(agent_pid)
    state, data = load(repo, "long")
    assert state == "pending"
    assert data["attempts"][0]["outcome"] == "interrupted"
    assert git(repo, "show", f"{data['attempts'][0]['saved_ref']}:partial.txt") == "half"


def test_an_unexpected_error_in_one_task_does_not_stop_the_others(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.endings as endings_module

    real_merge = endings_module.merge_branch

    def flaky_merge(git: object, **kwargs: object) -> object:
        if kwargs["task_id"] == "unlucky":
            raise OSError("disk on fire")
        return real_merge(git, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(endings_module, "merge_branch", flaky_merge)
    configure(repo, {"fake": {"command": write_agent(tmp_path, WRITE_FILE)}})
    add_task(repo, "unlucky", "u.txt")
    add_task(repo, "lucky", "l.txt")
    assert run_until_idle(repo) == 1
    state, data = load(repo, "unlucky")
    assert state == "failed"
    assert data["result"]["error"].startswith(
        "orchestrate failed while finishing this task: OSError: disk on fire"
    )
    assert load(repo, "lucky")[0] == "completed"
    assert git(repo, "show", "agent/unlucky:u.txt") == "unlucky"  # its work is kept on its branch


def test_a_task_file_written_in_place_is_taken_only_once_closed(repo: Path, tmp_path: Path) -> None:
    """A valid prefix of a file still being written must not run as a task."""
    received = tmp_path / "received.txt"
    agent = write_agent(tmp_path, f"pathlib.Path({str(received)!r}).write_text(prompt)\n")
    configure(repo, {"fake": {"command": agent}}, limits={"rescan_seconds": 0.2})
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    daemon.open()
    daemon._start_watching()
    try:
        with open(repo / "tasks" / "pending" / "slow.yaml", "w") as fh:
            fh.write("description: |\n  first line\n")
            fh.flush()
            wait_for(lambda: daemon._wakeups.writing, what="the write to be seen")
            for _ in range(10):  # several ticks and a full rescan while the file is open
                daemon.tick(time.time())
                time.sleep(0.05)
            assert "slow" not in daemon.pending and not daemon.runs
            fh.write("  second line\n")
        wait_for(
            lambda: (daemon.tick(time.time()), daemon.runs or received.exists())[1],
            what="the task to start",
        )
        wait_for(
            lambda: (daemon.tick(time.time()), received.exists() and not daemon.runs)[1],
            what="the agent to finish",
        )
    finally:
        daemon.close()
    assert received.read_text() == "first line\nsecond line\n"


def test_retries_back_off_exponentially_on_the_daemon_clock(repo: Path, tmp_path: Path) -> None:
    configure(
        repo,
        {"fake": {"command": write_agent(tmp_path, "sys.exit(1)\n")}},
        defaults={"max_retries": 3, "retry_delay_seconds": 100},
    )
    add_task(repo, "flaky", "x")
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    daemon.open()
    try:
        now = time.time()
        waits = []
        for attempt in range(1, 4):
            wait_for(
                lambda at=now: (daemon.tick(at), "flaky" in daemon.runs)[1],
                what=f"attempt {attempt} to start",
            )
            wait_for(lambda: daemon.runs["flaky"].run.done, what="the agent to exit")
            # the exit is settled on a worker, then recorded by a later tick
            wait_for(
                lambda at=now: (daemon.tick(at), load(repo, "flaky")[0] == "pending")[1],
                what="the failed attempt to be recorded",
            )
            _, data = load(repo, "flaky")
            assert len(data["attempts"]) == attempt
            not_before = parse_iso(data["not_before"])
            waits.append(not_before - now)
            daemon.tick(not_before - 1)  # a second early: nothing starts
            assert "flaky" not in daemon.busy.values()
            now = not_before
        # 100 s, then 200 s, then 400 s, each with jitter between 0.5x and 1.5x
        for n, wait in enumerate(waits):
            assert 100 * 2**n * 0.5 <= wait <= 100 * 2**n * 1.5
    finally:
        daemon.close()


def test_restart_finishes_an_end_that_was_written_but_not_moved(repo: Path, tmp_path: Path) -> None:
    """A crash between writing a task's end and moving its file: the end stands."""
    from protocol.store import TaskStore
    from protocol.task import Assignment, MergeInfo, Result, Task, TaskId, utc_iso

    configure(repo, {"fake": {"command": write_agent(tmp_path, "pass\n")}})
    store = TaskStore(repo)
    for task_id in ("done", "doomed"):
        store.submit(Task(id=TaskId(task_id), description="x"))
        store.claim(
            task_id, Assignment("fake-1", "fake", "w", f"agent/{task_id}", "h", 1, utc_iso(0))
        )

    def merged(t: Task) -> None:
        t.result = Result(merge=MergeInfo("merged", "orchestrate/integration", [], "abc"))

    def failed(t: Task) -> None:
        t.result = Result(error="gave up after 3 failed attempts: exited with code 1")

    store.update("done", merged)
    store.update("doomed", failed)
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    daemon.open()
    daemon.close()
    state, data = load(repo, "done")
    assert state == "completed" and data["result"]["merge"]["status"] == "merged"
    state, data = load(repo, "doomed")
    assert state == "failed" and data["result"]["error"].startswith("gave up after 3")


def test_a_slow_settle_holds_up_neither_other_slots_nor_the_stop(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's git work after its exit happens on a worker: while one slot's settle is
    held, the other slot starts, finishes and merges; a stop then waits for the held
    settle and records it, so nothing is left assigned."""
    import threading

    agent = write_agent(tmp_path, WRITE_FILE)
    configure(repo, {"fake": {"command": agent, "max_instances": 2}})
    add_task(repo, "held", "held.txt", priority="high")
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    entered, release = threading.Event(), threading.Event()
    settle = daemon._settle

    def slow_settle(running: object, task: object, now: float) -> object:
        if getattr(task, "id", None) == "held":
            entered.set()
            assert release.wait(30), "the test never released the settle"
        return settle(running, task, now)  # type: ignore[arg-type]

    monkeypatch.setattr(daemon, "_settle", slow_settle)
    daemon.open()
    try:
        wait_for(lambda: (daemon.tick(time.time()), entered.is_set())[1], what="the held settle")
        assert daemon.busy and "held" in daemon.settling
        add_task(repo, "free", "free.txt")
        wait_for(
            lambda: (daemon.tick(time.time()), load(repo, "free")[0] == "completed")[1],
            what="the other slot's task to finish while the first settles",
        )
        assert load(repo, "held")[0] == "assigned"
        daemon.request_stop("warm")
        release.set()
    finally:
        release.set()
        daemon.close()
    assert not daemon.settling
    state, data = load(repo, "held")
    assert state == "completed" and data["result"]["merge"]["status"] == "merged"
    files = git(repo, "ls-tree", "--name-only", "orchestrate/integration").split()
    assert {"held.txt", "free.txt"} <= set(files)


def test_a_stop_during_worktree_preparation_puts_the_task_back(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot's worktree is prepared on a worker after the claim: a stop that comes
    meanwhile starts no agent and returns the task to pending, its attempt marked."""
    import threading

    started = tmp_path / "started"
    agent = write_agent(tmp_path, f"pathlib.Path({str(started)!r}).touch()\n")
    configure(repo, {"fake": {"command": agent}})
    add_task(repo, "late", "x")
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    entered, release = threading.Event(), threading.Event()
    prepare = daemon._prepare_slot

    def slow_prepare(slot: str, task_id: str, base: str) -> tuple[float, float]:
        entered.set()
        assert release.wait(30), "the test never released the preparation"
        return prepare(slot, task_id, base)

    monkeypatch.setattr(daemon, "_prepare_slot", slow_prepare)
    daemon.open()
    try:
        wait_for(lambda: (daemon.tick(time.time()), entered.is_set())[1], what="the claim")
        assert load(repo, "late")[0] == "assigned" and "late" in daemon.preparing
        daemon.request_stop("warm")
        release.set()
        wait_for(lambda: (daemon.tick(time.time()), not daemon.preparing)[1], what="the stop")
    finally:
        release.set()
        daemon.close()
    state, data = load(repo, "late")
    assert state == "pending" and data["attempts"][-1]["outcome"] == "interrupted"
    assert not started.exists() and not daemon.busy
