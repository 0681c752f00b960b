"""The git floor: only the unavoidable git work for N tasks, as one whole process.

Per task, on one of ``--slots`` pooled worktrees (created in the timed run, as
orchestrate creates its own): reset the worktree to a new branch at the target,
run the same agent command, commit what it wrote, then merge into the target with
plumbing (``merge-tree --write-tree``, ``commit-tree``, ``update-ref`` with the old
value). No task files, no validation, no event log, no recovery.

Run: ``python -m bench.floor REPO --tasks 200 --slots 2 -- AGENT ARGV...``
(``{task_id}`` in the agent's argv is replaced by the task id).
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

TARGET_REF = "refs/heads/orchestrate/integration"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ("git", *args), cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("agent", nargs="+")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    todo: queue.Queue[str] = queue.Queue()
    for i in range(args.tasks):
        todo.put(f"f{i:05d}")
    merge_lock = threading.Lock()
    failures: list[BaseException] = []

    def slot(n: int) -> None:
        wt = repo / ".orchestrate" / "floor" / f"slot-{n}"
        _git(repo, "worktree", "add", "-q", "--detach", str(wt), TARGET_REF)
        while True:
            try:
                task_id = todo.get_nowait()
            except queue.Empty:
                return
            try:
                _git(wt, "checkout", "-q", "--force", "-B", f"floor/{task_id}", TARGET_REF)
                agent = [a.replace("{task_id}", task_id) for a in args.agent]
                subprocess.run(agent, cwd=wt, check=True, stdin=subprocess.DEVNULL)
                _git(wt, "add", "-A")
                _git(wt, "commit", "-q", "-m", f"task {task_id}")
                with merge_lock:
                    old = _git(repo, "rev-parse", TARGET_REF)
                    tree = _git(repo, "merge-tree", "--write-tree", old, f"floor/{task_id}")
                    new = _git(
                        repo, "commit-tree", tree, "-p", old, "-p", f"floor/{task_id}",
                        "-m", f"merge {task_id}",
                    )  # fmt: skip
                    _git(repo, "update-ref", TARGET_REF, new, old)
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=slot, args=(n,)) for n in range(args.slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in failures:
        print(f"floor: {exc}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    sys.exit(main())
