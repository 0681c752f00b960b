"""``orchestrate demo``: a sample repository, a handful of tasks, the built-in agent.

The tasks exercise parallel agents, a dependency, a priority and one deliberate
conflict, so a new user sees every outcome in under a minute with no API key.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.git import Git, orchestrate_identity
from orchestrator.repo import init_repo
from protocol.store import TaskStore
from protocol.task import Task, TaskId

CONFLICTING = ("readme-title", "readme-tagline")

DEMO_TASKS: list[dict[str, object]] = [
    {
        "id": "readme-title",
        "priority": "high",
        "description": "Give the README a proper title.\nreplace README.md: # Sample => # Sample project",
    },
    {
        "id": "greeting",
        "description": 'Add a greeting function.\nwrite src/greet.py: def greet(name): return f"Hello, {name}!"',
    },
    {
        "id": "greeting-test",
        "depends_on": ["greeting"],
        "description": (
            "Test the greeting function (needs greeting first).\n"
            "write tests/test_greet.py: from src.greet import greet; assert greet('x') == 'Hello, x!'"
        ),
    },
    {
        "id": "docs",
        "priority": "low",
        "description": "Document usage.\nwrite docs/usage.md: Call greet(name) to greet someone.",
    },
    {
        "id": "changelog",
        "description": "Start a changelog.\nwrite CHANGELOG.md: ## 0.1.0 - first release\ncommit",
    },
    {
        "id": "readme-tagline",
        "priority": "high",
        "description": "Retitle the README (this one conflicts with readme-title on purpose).\n"
        "sleep 0.5\nreplace README.md: # Sample => # Sample app",
    },
]


def make_demo_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git = Git(path)
    git.run("init", "-q", "-b", "main")
    (path / "README.md").write_text("# Sample\n\nA tiny project for the orchestrate demo.\n")
    (path / "src").mkdir(exist_ok=True)
    (path / "src" / "__init__.py").write_text("")
    git.run("add", "-A")
    git.run("commit", "-q", "-m", "Initial commit", env=orchestrate_identity())
    init_repo(path)
    config = path / "orchestrate.yaml"
    text = config.read_text()
    text = text.replace("retry_delay_seconds: 60", "retry_delay_seconds: 1")
    config.write_text(text)
    store = TaskStore(path)
    for spec in DEMO_TASKS:
        store.submit(
            Task(
                id=TaskId(str(spec["id"])),
                description=str(spec["description"]),
                priority=spec.get("priority", "normal"),  # type: ignore[arg-type]
                depends_on=[TaskId(d) for d in spec.get("depends_on", [])],  # type: ignore[attr-defined]
            )
        )
    return path


def run_demo(path: Path | None, echo: Callable[[str], None]) -> int:
    from orchestrator.daemon import Daemon
    from orchestrator.inspect import task_rows

    root = make_demo_repo(
        Path(path) if path else Path(tempfile.mkdtemp(prefix="orchestrate-demo-"))
    )
    root = root.resolve()
    echo(f"demo repository: {root}")
    echo(f"queued {len(DEMO_TASKS)} tasks; running them with 3 demo agents\n")
    config = load_config(root)
    Daemon(root, config, echo=echo).run(until_idle=True)
    rows = task_rows(root, config)
    echo("")
    expected = True
    for row in rows:
        detail = row["merge_status"] or row["error"] or row["waiting_on"] or ""
        if row["conflicts"]:
            detail += ": " + ", ".join(row["conflicts"])
        echo(f"  {row['id']:<16} {row['state']:<10} {detail}")
        if row["state"] != "completed" or (
            row["merge_status"] not in ("merged", "no_changes") and row["id"] not in CONFLICTING
        ):
            expected = False
    conflicted = [r["id"] for r in rows if r["merge_status"] == "conflict"]
    echo("\nWhere to look:")
    echo(f"  git -C {root} log --oneline --graph {config.merge.target}")
    echo(f"  git -C {root} branch --list 'agent/*'")
    echo(f"  cat {root}/context/current_state.md")
    if conflicted:
        task_id = conflicted[0]
        echo(
            f"  {task_id} conflicts on purpose: git -C {root} diff {config.merge.target}...agent/{task_id}"
        )
        echo(f"  fix agent/{task_id}, then: orchestrate -C {root} merge {task_id}")
    if len(conflicted) != 1:
        expected = False
    return 0 if expected else 1
