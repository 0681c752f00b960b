"""Cost, budget and usage limits through the daemon, with a stand-in for Claude Code
that prints the same stream-json result events (the real CLI is tested in
test_real_clis.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.daemon import Daemon
from orchestrator.inspect import status_report
from tests.helpers import add_task, configure, load, make_repo, run_until_idle, write_agent

RESULT = """
pathlib.Path(task + ".txt").write_text("done\\n")
print(json.dumps({"type": "system", "subtype": "init", "session_id": "s-" + task}))
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
                  "result": "ok", "session_id": "s-" + task, "total_cost_usd": 0.6,
                  "usage": {"input_tokens": 100, "output_tokens": 20}}))
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def fake_claude(tmp_path: Path, *parts: str) -> list[str]:
    return write_agent(tmp_path, "import json\n", *parts)


def test_tokens_and_cost_are_recorded_and_the_budget_stops_dispatch(
    repo: Path, tmp_path: Path
) -> None:
    agent = fake_claude(tmp_path, RESULT)
    configure(
        repo, {"claude": {"preset": "claude", "command": agent}}, limits={"max_cost_usd": 1.0}
    )
    for n in range(3):
        add_task(repo, f"t{n}", "x")
    assert run_until_idle(repo) == 1  # the third task waits on the budget
    _, first = load(repo, "t0")
    result = first["result"]
    assert (result["input_tokens"], result["output_tokens"], result["cost_usd"]) == (100, 20, 0.6)
    assert (result["session_id"], result["turns"]) == ("s-t0", 3)
    assert load(repo, "t2")[0] == "pending"
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "-C", str(repo), "status", "--json"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert status["cost_usd"] == {"claude": 1.2}
    assert status["tokens"] == {"claude": 240}
    events = (repo / ".orchestrate" / "events.jsonl").read_text()
    assert "merged t1" in events


def test_exit_zero_without_work_is_not_a_success(repo: Path, tmp_path: Path) -> None:
    agent = fake_claude(
        tmp_path,
        """
        print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                          "num_turns": 1, "result": "I would do it", "usage": {}}))
        """,
    )
    configure(repo, {"claude": {"preset": "claude", "command": agent}})
    add_task(repo, "lazy", "x")
    assert run_until_idle(repo) == 1
    state, data = load(repo, "lazy")
    assert state == "failed"
    assert "no files changed in the worktree" in data["result"]["error"]


def test_usage_limit_defers_the_task_and_cools_the_agent(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "limited-once"
    agent = fake_claude(
        tmp_path,
        f"""
        if not pathlib.Path({str(marker)!r}).exists():
            pathlib.Path({str(marker)!r}).touch()
            print("Claude AI usage limit reached, try again in 1 second")
            sys.exit(1)
        """,
        RESULT,
    )
    configure(repo, {"claude": {"preset": "claude", "command": agent}}, defaults={"max_retries": 0})
    add_task(repo, "limited", "x")
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    daemon.open()
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or daemon.busy:
            daemon.tick(time.time())
            assert time.monotonic() < deadline
            time.sleep(0.02)
        state, data = load(repo, "limited")
        assert state == "pending"
        assert data["attempts"][0]["outcome"] == "rate_limited"
        assert "usage limit" in data["waiting_reason"]
        assert data["not_before"]
        assert daemon.agents["claude"].cooling_until is not None
        assert "claude" in status_report(repo, load_config(repo))["cooling"]
    finally:
        daemon.close()
    # max_retries is 0, yet the task runs again: a usage limit is not a failure
    assert run_until_idle(repo) == 0
    assert load(repo, "limited")[0] == "completed"


def test_limit_retried_past_the_timeout_is_deferred_not_failed(repo: Path, tmp_path: Path) -> None:
    # Aider retries a 429 for over a minute: the daemon's timeout stops it, and
    # what it printed still says a usage limit held it up
    reset = int(time.time()) + 3600
    agent = fake_claude(
        tmp_path,
        f"""
        print("Claude AI usage limit reached|{reset}", flush=True)
        time.sleep(60)
        """,
    )
    configure(
        repo,
        {"claude": {"preset": "claude", "command": agent, "timeout_minutes": 0.02}},
        defaults={"max_retries": 0},
    )
    add_task(repo, "stalled", "x")
    daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
    daemon.open()
    try:
        deadline = time.monotonic() + 30
        while not load(repo, "stalled")[1].get("attempts") or daemon.busy:
            daemon.tick(time.time())
            assert time.monotonic() < deadline
            daemon.wake.wait(0.05)
            daemon.wake.clear()
        assert daemon.agents["claude"].cooling_until == reset
    finally:
        daemon.close()
    state, data = load(repo, "stalled")
    assert state == "pending"
    assert data["attempts"][0]["outcome"] == "rate_limited"
    assert data["attempts"][0]["error"].startswith("timed out after 0.02 minutes (")
    assert data["not_before"]
