"""Merge a task's branch into the target with plumbing only.

``git merge-tree --write-tree`` computes the merge without a working tree,
``git commit-tree`` records it, and ``git update-ref <ref> <new> <old>`` moves the
target only if nobody moved it meanwhile (else we compute again). Nothing is ever
checked out, so the user's checkout and every worktree stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.git import Git, orchestrate_identity

MAX_RACES = 20


@dataclass
class MergeOutcome:
    status: str  # merged | conflict | blocked | no_changes | clean (test merge only)
    target: str
    conflicts: list[str] = field(default_factory=list)
    commit: str | None = None
    message: str | None = None


def test_merge(git: Git, target_commit: str, branch_commit: str) -> tuple[str | None, list[str]]:
    """(tree of the merge, []) when clean, or (None, conflicting paths)."""
    result = git.run(
        "merge-tree", "--write-tree", "--name-only", "--no-messages",
        target_commit, branch_commit, ok_codes=(0, 1),
    )  # fmt: skip
    lines = result.stdout.splitlines()
    tree = lines[0].strip() if lines else None
    if result.code == 0:
        return tree, []
    conflicts: list[str] = []
    for line in lines[1:]:
        if not line:
            break
        if line not in conflicts:
            conflicts.append(line)
    return None, conflicts


def merge_branch(
    git: Git,
    *,
    target: str,
    branch_commit: str,
    base_commit: str | None,
    task_id: str,
    title: str,
    dry_run: bool = False,
) -> MergeOutcome:
    ref = f"refs/heads/{target}"
    if base_commit is not None and branch_commit == base_commit:
        return MergeOutcome("no_changes", target, message="the agent changed nothing")
    holder = git.checked_out_branches().get(ref)
    if holder is not None and not dry_run:
        return MergeOutcome(
            "blocked",
            target,
            message=(
                f"the target branch '{target}' is checked out in {holder}; orchestrate never "
                f"moves a checked-out branch (switch that worktree to another branch, then run "
                f"'orchestrate merge {task_id}')"
            ),
        )
    env = orchestrate_identity()
    for _ in range(MAX_RACES):
        old = git.rev_parse(ref)
        if old is None:
            return MergeOutcome(
                "blocked", target, message=f"the target branch '{target}' does not exist"
            )
        if git.is_ancestor(branch_commit, old):
            return MergeOutcome(
                "merged", target, commit=old, message="already contained in the target"
            )
        tree, conflicts = test_merge(git, old, branch_commit)
        if tree is None:
            return MergeOutcome(
                "conflict",
                target,
                conflicts=conflicts,
                message=f"conflicts with '{target}' in: {', '.join(conflicts)}",
            )
        if dry_run:
            return MergeOutcome("clean", target, message=f"merges cleanly into '{target}'")
        message = f"Merge task {task_id}: {title}\n\nOrchestrate-Task: {task_id}\n"
        commit = git.out(
            "commit-tree", tree, "-p", old, "-p", branch_commit, "-m", message, env=env
        )
        if git.update_ref(ref, commit, old, f"orchestrate: merge task {task_id}"):
            return MergeOutcome("merged", target, commit=commit)
    return MergeOutcome(
        "blocked",
        target,
        message=f"the target '{target}' kept moving; try 'orchestrate merge {task_id}'",
    )
