"""Configuration features end to end: manual merges, ignored files, prompts, detach."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import add_task, configure, git, load, make_repo, run_until_idle, write_agent


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_manual_mode_test_merges_only_then_merge_by_hand(repo: Path, tmp_path: Path) -> None:
    agent = write_agent(tmp_path, 'pathlib.Path("new.txt").write_text("x\\n")\n')
    configure(repo, {"fake": {"command": agent}}, merge={"mode": "manual"})
    target_before = git(repo, "rev-parse", "orchestrate/integration")
    add_task(repo, "m", "x")
    assert run_until_idle(repo) == 1  # completed but not merged
    _, data = load(repo, "m")
    assert data["result"]["merge"]["status"] == "clean"
    assert git(repo, "rev-parse", "orchestrate/integration") == target_before
    merged = subprocess.run(
        [sys.executable, "-m", "orchestrator", "-C", str(repo), "merge", "m"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert merged.stdout.startswith("merged m into orchestrate/integration")
    assert git(repo, "show", "orchestrate/integration:new.txt") == "x"
    _, data = load(repo, "m")
    assert data["result"]["merge"]["status"] == "merged"


def test_ignored_files_reach_the_worktree_without_changing_the_user_tree(
    repo: Path, tmp_path: Path
) -> None:
    (repo / ".gitignore").write_text(".env\nnode_modules/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    git(repo, "branch", "-f", "orchestrate/integration", "main")
    (repo / ".env").write_text("SECRET=1\n")
    (repo / "node_modules" / "lib").mkdir(parents=True)
    (repo / "node_modules" / "lib" / "index.js").write_text("module.exports = 1\n")
    agent = write_agent(
        tmp_path,
        """
        env = pathlib.Path(".env").read_text()
        lib = pathlib.Path("node_modules/lib/index.js").read_text()
        pathlib.Path("seen.txt").write_text(env + lib)
        """,
    )
    configure(
        repo, {"fake": {"command": agent}}, worktrees={"copy_ignored": [".env", "node_modules"]}
    )
    add_task(repo, "needs-env", "x")
    assert run_until_idle(repo) == 0
    assert git(repo, "show", "agent/needs-env:seen.txt") == "SECRET=1\nmodule.exports = 1"
    _, data = load(repo, "needs-env")
    assert data["result"]["files_changed"] == ["seen.txt"]  # the copies are ignored, not committed


def test_prompt_carries_context_files_and_is_cut_to_budget(repo: Path, tmp_path: Path) -> None:
    (repo / "context" / "notes.md").write_text(
        "NOTE-START\n" + "filler line\n" * 5000 + "NOTE-END\n"
    )
    received = tmp_path / "prompt.txt"
    agent = write_agent(tmp_path, f"pathlib.Path({str(received)!r}).write_text(prompt)\n")
    configure(repo, {"fake": {"command": agent}}, limits={"prompt_budget_bytes": 4000})
    add_task(
        repo, "ctx", "Use the notes.", context_files=["context/notes.md", "context/missing.md"]
    )
    assert run_until_idle(repo) == 0
    prompt = received.read_text()
    assert prompt.startswith("Use the notes.\n")
    assert "NOTE-START" in prompt and "NOTE-END" in prompt
    assert "cut here to fit the prompt budget" in prompt
    assert len(prompt) <= 4000
    events = [
        json.loads(line)
        for line in (repo / ".orchestrate" / "events.jsonl").read_text().splitlines()
    ]
    notes = [e["message"] for e in events if e["event"] == "prompt"]
    assert "ctx: context file 'context/missing.md' was not found" in notes


def test_context_files_record_completed_work(repo: Path, tmp_path: Path) -> None:
    configure(
        repo, {"fake": {"command": write_agent(tmp_path, 'pathlib.Path(task).write_text("x")\n')}}
    )
    add_task(repo, "one", "first")
    add_task(repo, "two", "second")
    assert run_until_idle(repo) == 0
    done = json.loads((repo / "context" / "completed_tasks.json").read_text())
    assert {d["id"] for d in done} == {"one", "two"}
    assert all(d["merge_status"] == "merged" for d in done)
    state = (repo / "context" / "current_state.md").read_text()
    assert "- one: first (merge: merged)" in state
    assert (repo / "context" / "agent_outputs" / "one_output.md").exists()


def test_detached_daemon_reports_and_stops(repo: Path, tmp_path: Path) -> None:
    configure(repo, {"fake": {"command": write_agent(tmp_path, "pass\n")}})

    def orchestrate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", "-C", str(repo), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    started = orchestrate("start", "--detach")
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("pid ")[1].split(";")[0])
    try:
        status = json.loads(orchestrate("status", "--json").stdout)
        assert status["daemon_pid"] == pid
        second = orchestrate("start")
        assert second.returncode == 1
        assert f"(pid {pid} holds .orchestrate/daemon.lock)" in second.stderr
    finally:
        stopped = orchestrate("stop", "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(orchestrate("status", "--json").stdout)["daemon_pid"] is None


def test_a_prompt_too_long_for_one_argument_fails_with_the_fix(repo: Path, tmp_path: Path) -> None:
    (repo / "context" / "big.md").write_text("x" * 200_000)
    agent = write_agent(tmp_path, "pass\n")
    configure(
        repo, {"fake": {"command": [*agent, "{prompt}"]}}, limits={"prompt_budget_bytes": 300_000}
    )
    add_task(repo, "huge", "x", context_files=["context/big.md"])
    assert run_until_idle(repo) == 1
    state, data = load(repo, "huge")
    assert state == "failed"
    assert (
        "over the 131072 bytes Linux allows in one; use {prompt_file} in agents.fake.command"
        in data["result"]["error"]
    )


def test_context_writes_are_spaced_out_once_they_grow_costly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing context/ grows with the completed tasks: a write that took 1 s is not
    due again for 50 s (2% of the time), while a cheap one is due every interval."""
    from orchestrator import context as ctx

    assert ctx.paced(2.0, 0.001) == 2.0 and ctx.paced(2.0, 1.0) == 50.0
    import time
    import types

    clock = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], strftime=time.strftime)
    monkeypatch.setattr(ctx, "time", fake_time)
    real_write = ctx.atomic_write

    def slow_write(path: Path, text: str) -> None:
        real_write(path, text)
        clock[0] += 0.5  # two files: the flush takes 1 s on this clock

    monkeypatch.setattr(ctx, "atomic_write", slow_write)
    writer = ctx.ContextWriter(tmp_path, interval=2.0)
    writer.mark_dirty()
    assert writer.flush(running=[], waiting={}, counts={})
    writer.mark_dirty()
    clock[0] += 10
    assert not writer.due()
    clock[0] += 40
    assert writer.due() and writer.due(force=True)
