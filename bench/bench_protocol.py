"""How long counting and listing tasks take at 100, 1,000 and 10,000 tasks.

Run: ``python -m bench.bench_protocol [--repeat N] [--sizes 100,1000,10000] [--profile]``

The trees are written straight into the state directories (the benchmark
measures reading, not submitting): a realistic mix of states, the finished
ones carrying attempts, a result and a merge block. Times are wall-clock with a
warm page cache, repeated; the table shows the median and the min-max spread.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench import common
from protocol.store import TaskStore
from protocol.task import Assignment, Attempt, MergeInfo, Result, Task, TaskId, utc_iso

T0 = 1_800_000_000.0


def make_task(i: int, state: str) -> Task:
    stamp = utc_iso(T0 + i)
    task = Task(
        id=TaskId(f"task-{i:05d}"),
        description=f"Implement feature {i} in src/feature_{i}.py with tests.\n" * 3,
        priority=("high", "normal", "low")[i % 3],  # type: ignore[arg-type]
        agent="claude",
        depends_on=[TaskId(f"task-{i - 1:05d}")] if i else [],
        context_files=["context/project_overview.md"],
        submitted_at=stamp,
    )
    if state in ("assigned", "completed", "failed"):
        task.attempts = [
            Attempt(number=1, agent_id="claude-1", agent_type="claude", started_at=stamp)
        ]
    if state == "assigned":
        task.assignment = Assignment(
            agent_id="claude-1",
            agent_type="claude",
            worktree=".orchestrate/worktrees/claude-1",
            branch=f"orchestrate/task-{i:05d}",
            host="bench",
            attempt=1,
            assigned_at=stamp,
            pid=1000 + i,
        )
    if state in ("completed", "failed"):
        task.attempts[0].ended_at = stamp
        task.attempts[0].exit_code = 0 if state == "completed" else 1
        task.result = Result(
            agent_id="claude-1",
            branch=f"orchestrate/task-{i:05d}",
            commit="0" * 40,
            files_changed=[f"src/feature_{i}.py", f"tests/test_feature_{i}.py"],
            output_file=f"context/agent_outputs/task-{i:05d}_output.md",
            input_tokens=12000,
            output_tokens=3000,
            cost_usd=0.42,
            error=None if state == "completed" else "tests failed",
            merge=MergeInfo(status="merged", target="main", commit="1" * 40)
            if state == "completed"
            else None,
        )
    return task


def build_tree(root: Path, n: int) -> TaskStore:
    store = TaskStore(root)
    store.ensure_layout()
    for i in range(n):
        # 70% completed, 10% failed, 10% assigned, 10% pending: a long-lived repository
        state = ("completed",) * 7 + ("failed", "assigned", "pending")
        s = state[i % 10]
        (store.dir(s) / f"task-{i:05d}.yaml").write_bytes(make_task(i, s).dump())  # type: ignore[arg-type]
    return store


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def fmt(seconds: list[float]) -> str:
    med = statistics.median(seconds)
    return f"{med * 1000:9.2f} ms  ({min(seconds) * 1000:.2f}-{max(seconds) * 1000:.2f})"


def machine() -> str:
    return f"{common.machine()}, PyYAML {yaml.__version__} (libyaml: {yaml.__with_libyaml__})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--profile", action="store_true", help="profile one listing at the largest size"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"machine: {machine()}")
    print(f"repeat: {args.repeat} runs per figure; median (min-max)\n")
    print(
        f"{'tasks':>7}  {'counts() (directory entries)':>34}  {'iter_tasks() (full parse)':>34}  {'per task':>9}"
    )
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"bench-protocol-{n}-"))
        try:
            store = build_tree(root, n)
            counted = sum(store.counts().values())
            listed = sum(1 for _ in store.iter_tasks())
            assert counted == listed == n, (counted, listed, n)
            count_times = timed(store.counts, args.repeat * 3)
            list_times = timed(lambda s=store: sum(1 for _ in s.iter_tasks()), args.repeat)
            per = statistics.median(list_times) / n * 1e6
            print(f"{n:>7}  {fmt(count_times):>34}  {fmt(list_times):>34}  {per:7.1f} us")
            if args.profile and n == max(sizes):
                profiler = cProfile.Profile()
                profiler.runcall(lambda s=store: sum(1 for _ in s.iter_tasks()))
                print()
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)
        finally:
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
