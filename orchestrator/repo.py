"""Setting a repository up for orchestrate, checking it, tidying it, merging by hand."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import CONFIG_NAME, PRESET_NAMES, Config, load_config
from orchestrator.context import atomic_write
from orchestrator.git import MIN_GIT, Git, GitError, add_excludes
from orchestrator.merge import MergeOutcome, merge_branch
from orchestrator.worktrees import WorktreePool, branch_name
from protocol.errors import OrchestrateError
from protocol.store import TaskStore
from protocol.task import MergeInfo, Result, Task

EXCLUDES = ("/.orchestrate/", "/tasks/", "/context/", f"/{CONFIG_NAME}")


def _config_text(target: str, found: list[str]) -> str:
    lines = [
        "# orchestrate configuration (README.md, section 'Configuration', explains every key).",
        "# Agent commands are argument lists, never run through a shell. Placeholders:",
        "#   {prompt} the whole prompt as one argument, {prompt_file}, {task_id}, {worktree}.",
        "# Without {prompt} or {prompt_file} the prompt is passed as the last argument.",
        "agents:",
        "  demo:                      # built in: edits files as the task says, no API key",
        "    command: [demo]",
        "    max_instances: 3",
    ]
    for name in PRESET_NAMES:
        if name in found:
            lines += [
                f"  {name}:                   # found on PATH; preset command, output parser",
                f"    preset: {name}",
                "    max_instances: 2",
                "    # model: <model name>",
                "    # extra_args: []",
            ]
    lines += [
        "merge:",
        f"  target: {target}   # finished work is merged here; never a checked-out branch",
        "  mode: auto                     # auto | manual (test-merge and flag only)",
        "defaults:",
        "  timeout_minutes: 30",
        "  max_retries: 3",
        "  retry_delay_seconds: 60        # doubles per retry, with jitter",
        "  aging_minutes: 30              # a waiting task climbs one priority level per period",
        "  min_start_interval_seconds: 0  # space the starts of one agent type (rate limits)",
        "limits:",
        "  # max_cost_usd: 20             # stop dispatching when agents' reported cost reaches this",
        "  log_cap_bytes: 52428800",
        "worktrees:",
        "  copy_ignored: []               # ignored files agents need, e.g. [.env, node_modules]",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class InitReport:
    root: Path
    config_written: bool
    target: str
    target_created: bool
    agents_found: list[str]


def init_repo(root: Path, *, target: str | None = None) -> InitReport:
    git = Git(root)
    top = git.run("rev-parse", "--show-toplevel", check=False)
    if top.code != 0:
        raise OrchestrateError(f"{root} is not a git repository (run 'git init' first)")
    root = Path(top.stdout.strip())
    found = [name for name in PRESET_NAMES if shutil.which(name)]
    config_path = root / CONFIG_NAME
    written = False
    if config_path.exists():
        config = load_config(root)
        if target is not None and target != config.merge.target:
            raise OrchestrateError(
                f"{CONFIG_NAME} already sets merge.target to '{config.merge.target}'; "
                f"edit it there to use '{target}'"
            )
        target = config.merge.target
    else:
        target = target or "orchestrate/integration"
        atomic_write(config_path, _config_text(target, found))
        load_config(root)  # the template must always be valid
        written = True
    TaskStore(root).ensure_layout()
    (root / "context" / "agent_outputs").mkdir(parents=True, exist_ok=True)
    overview = root / "context" / "project_overview.md"
    if not overview.exists():
        listing = ", ".join(sorted(p.name for p in root.iterdir() if not p.name.startswith(".")))
        atomic_write(
            overview,
            f"# {root.name}\n\nTop-level entries: {listing}.\n\n"
            "Agents read this file when a task lists it in context_files; "
            "describe the project's purpose and conventions here.\n",
        )
    (root / ".orchestrate").mkdir(exist_ok=True)
    add_excludes(git, list(EXCLUDES))
    created = False
    if git.rev_parse(f"refs/heads/{target}") is None:
        head = git.rev_parse("HEAD")
        if head is None:
            raise OrchestrateError(
                "the repository has no commits yet: make a first commit, then run "
                "'orchestrate init' again"
            )
        git.update_ref(f"refs/heads/{target}", head, None, "orchestrate: create merge target")
        created = True
    return InitReport(root, written, target, created, found)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def doctor(root: Path) -> list[Check]:
    checks: list[Check] = []
    git = Git(root)
    try:
        version = git.version()
        ok = version >= MIN_GIT
        checks.append(
            Check(
                "git",
                ok,
                f"git {'.'.join(map(str, version))}"
                + (
                    ""
                    if ok
                    else f"; orchestrate needs {'.'.join(map(str, MIN_GIT))}+ for merge-tree"
                ),
            )
        )
    except (OSError, OrchestrateError) as exc:
        checks.append(Check("git", False, f"git cannot run: {exc}"))
        return checks
    try:
        config: Config | None = load_config(root)
        checks.append(Check("configuration", True, f"{CONFIG_NAME} is valid"))
    except OrchestrateError as exc:
        checks.append(Check("configuration", False, str(exc)))
        config = None
    if config is not None:
        for name, agent in sorted(config.agents.items()):
            program = agent.command[0] if agent.command else _preset_program(agent.preset)
            path = shutil.which(program) if program else None
            checks.append(
                Check(
                    f"agent {name}",
                    path is not None,
                    f"{program} -> {path}" if path else f"'{program}' is not on PATH",
                )
            )
        if git.rev_parse(f"refs/heads/{config.merge.target}") is None:
            checks.append(
                Check(
                    "merge target",
                    False,
                    f"branch '{config.merge.target}' does not exist (run 'orchestrate init')",
                )
            )
        else:
            holder = git.checked_out_branches().get(f"refs/heads/{config.merge.target}")
            checks.append(
                Check(
                    "merge target",
                    holder is None,
                    f"'{config.merge.target}' exists"
                    + (
                        f" but is checked out in {holder}: merges will be blocked" if holder else ""
                    ),
                )
            )
    return checks


def _preset_program(preset: str | None) -> str | None:
    if preset is None:
        return None
    from orchestrator.presets import PRESETS

    return PRESETS[preset].executable


def merge_task(root: Path, config: Config, task_id: str) -> MergeOutcome:
    """Merge a completed task's branch by hand (after the user fixed a conflict)."""
    store = TaskStore(root)
    state, task = store.load(task_id)
    if state != "completed":
        raise OrchestrateError(
            f"task '{task_id}' is {state}; only completed tasks are merged "
            f"(see 'orchestrate show {task_id}')"
        )
    git = Git(root)
    branch = branch_name(task_id)
    head = git.rev_parse(f"refs/heads/{branch}")
    if head is None:
        raise OrchestrateError(f"branch '{branch}' of task '{task_id}' does not exist any more")
    base = task.result.base_commit if task.result else None
    outcome = merge_branch(
        git,
        target=config.merge.target,
        branch_commit=head,
        base_commit=base,
        task_id=task_id,
        title=task.title,
    )

    def record(t: Task) -> None:
        t.result = t.result or Result()
        t.result.commit = head
        t.result.merge = MergeInfo(
            outcome.status, outcome.target, outcome.conflicts, outcome.commit, outcome.message
        )

    store.update(task_id, record, states=("completed",))
    return outcome


def clean(root: Path, config: Config) -> list[str]:
    """Remove the branches of merged tasks, and the worktrees when no daemon runs."""
    from orchestrator.inspect import read_pid

    store = TaskStore(root)
    git = Git(root)
    removed: list[str] = []
    checked_out = git.checked_out_branches()
    for _, task in store.iter_tasks(("completed",)):
        merge = task.result.merge if task.result else None
        if merge is None or merge.status not in ("merged", "no_changes"):
            continue
        ref = f"refs/heads/{branch_name(task.id)}"
        if ref in checked_out or git.rev_parse(ref) is None:
            continue
        try:
            git.run("update-ref", "-d", ref)
            removed.append(branch_name(task.id))
        except GitError:
            continue
    if read_pid(root) is None:
        WorktreePool(git, root).remove_all()
        removed.append("worktrees")
    return removed
