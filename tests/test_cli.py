"""The orchestrate command as users run it: real processes, exact messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import configure, git, make_repo, orchestrate, write_agent


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = make_repo(tmp_path / "repo")
    configure(root, {"demo": {"command": ["demo"], "max_instances": 2}})
    return root


def test_init_keeps_git_status_clean_and_creates_the_target(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "a.txt").write_text("a\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    out = orchestrate(root, "init", "--target", "integration").stdout
    assert "created merge target branch 'integration' from HEAD" in out
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "rev-parse", "integration") == git(root, "rev-parse", "main")
    for state in ("pending", "assigned", "completed", "failed"):
        assert (root / "tasks" / state).is_dir()
    again = orchestrate(root, "init", "--target", "other", check=False)
    assert again.returncode == 1
    assert "already sets merge.target to 'integration'" in again.stderr


def test_add_status_tasks_show_and_run(repo: Path) -> None:
    first = orchestrate(
        repo, "add", "write a.txt: hello", "--id", "alpha", "--priority", "high"
    ).stdout.strip()
    assert first == "alpha"
    generated = orchestrate(repo, "add", "write b.txt: bye", "--depends-on", "alpha").stdout.strip()
    assert generated != "alpha" and len(generated) > 20
    status = json.loads(orchestrate(repo, "status", "--json").stdout)
    assert status["counts"] == {"pending": 2, "assigned": 0, "completed": 0, "failed": 0}
    assert status["daemon_pid"] is None
    assert [a["state"] for a in status["agents"]] == ["free", "free"]
    rows = {r["id"]: r for r in json.loads(orchestrate(repo, "tasks", "--json").stdout)}
    assert rows[generated]["waiting_on"] == "waits on 'alpha' (pending)"
    for key in ("id", "state", "priority", "agent", "branch", "merge_status", "waiting_on"):
        assert key in rows["alpha"]
    run = orchestrate(repo, "start", "--until-idle", check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "merged alpha into orchestrate/integration" in run.stdout
    shown = json.loads(orchestrate(repo, "show", generated, "--json").stdout)
    assert shown["state"] == "completed"
    assert shown["result"]["merge"]["status"] == "merged"
    assert "demo agent: write a.txt" in orchestrate(repo, "logs", "alpha").stdout
    table = orchestrate(repo, "tasks").stdout
    assert table.splitlines()[0].split()[:4] == ["ID", "STATE", "PRIORITY", "AGENT"]
    cleaned = orchestrate(repo, "clean").stdout
    assert "agent/alpha" in cleaned
    assert git(repo, "branch", "--list", "agent/alpha") == ""


def test_errors_name_the_task_and_the_next_command(repo: Path) -> None:
    missing = orchestrate(repo, "show", "nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "Error: no task 'nope' in tasks/pending, assigned, completed or failed "
        "(run 'orchestrate tasks' to list them)"
    )
    orchestrate(repo, "add", "x", "--id", "dup")
    clash = orchestrate(repo, "add", "y", "--id", "dup", check=False)
    assert clash.returncode == 1
    assert "task id 'dup' is already taken by" in clash.stderr
    retry = orchestrate(repo, "retry", "dup", check=False)
    assert retry.stderr.strip() == (
        "Error: cannot retry task 'dup': it is pending, and retry applies only to failed tasks"
    )
    bad_agent = orchestrate(repo, "add", "x", "--agent", "ghost", check=False)
    assert (
        bad_agent.stderr.strip() == "Error: agent type 'ghost' is not configured (configured: demo)"
    )
    stop = orchestrate(repo, "stop", check=False)
    assert stop.returncode == 1 and "no daemon is running" in stop.stderr


def test_invalid_configuration_names_the_key(repo: Path) -> None:
    (repo / "orchestrate.yaml").write_text(
        "agents:\n  x:\n    command: [a]\n    max_instances: two\n"
    )
    result = orchestrate(repo, "start", "--until-idle", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: orchestrate.yaml: 'agents.x.max_instances' must be a whole number above 0, not 'two'"
    )


def test_cancel_moves_a_pending_task_to_failed(repo: Path) -> None:
    orchestrate(repo, "add", "x", "--id", "gone")
    assert "gone cancelled" in orchestrate(repo, "cancel", "gone").stdout
    assert (repo / "tasks" / "failed" / "gone.yaml").exists()
    assert "is pending again" in orchestrate(repo, "retry", "gone").stdout


def test_status_imports_neither_git_nor_watchdog(repo: Path) -> None:
    code = (
        "import sys; from orchestrator.cli import main; rc = main(['-C', sys.argv[1], 'status']);"
        "bad = [m for m in sys.modules if m == 'git' or m.startswith(('git.', 'watchdog'))];"
        "print('LOADED', bad); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(repo)], capture_output=True, text=True, check=True
    )
    assert "LOADED []" in result.stdout


def test_doctor_reports_each_agent(repo: Path, tmp_path: Path) -> None:
    configure(
        repo,
        {
            "fake": {"command": write_agent(tmp_path, "pass\n")},
            "ghost": {"command": ["no-such-agent-cli"]},
        },
    )
    result = orchestrate(repo, "doctor", check=False)
    assert result.returncode == 1
    assert "ok  git: git 2." in result.stdout
    assert "FAIL agent ghost: 'no-such-agent-cli' is not on PATH" in result.stdout


def test_demo_runs_on_built_in_defaults(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--path", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "readme-tagline   completed  conflict: README.md" in result.stdout
    assert "greeting-test    completed  merged" in result.stdout
