"""The five measurements of issue 6, each beside its floor measured in the same run.

Each function builds its own repositories in ``workdir``, runs whole processes and
returns plain figures; ``bench.__main__`` prints and records them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    Figure,
    configure,
    env,
    make_repo,
    orchestrate_argv,
    percentile,
    queue,
    repo_size,
    run_process,
    time_process,
)

# agents: real processes, as cheap as a process can be (the prompt comes last, unused)
WRITE_ONE = ["sh", "-c", 'echo "$1" > "bench-$1.txt"', "agent", "{task_id}"]
NO_OP = ["true"]


def _counts(root: Path) -> dict[str, int]:
    return {
        s: len(os.listdir(root / "tasks" / s))
        for s in ("pending", "assigned", "completed", "failed")
    }


# ----- 1. per-task overhead on a large repository ---------------------------------------


@dataclass
class Overhead:
    files: int
    megabytes: float
    tasks: int
    slots: int
    orchestrate: Figure
    floor: Figure
    outcome: str

    @property
    def ratio(self) -> float:
        return self.orchestrate.median / self.floor.median

    @property
    def per_task_ms(self) -> float:
        return (self.orchestrate.median - self.floor.median) / self.tasks * 1000


def overhead(workdir: Path, *, tasks: int, slots: int, repeat: int) -> Overhead:
    times: list[float] = []
    floors: list[float] = []
    outcome = ""
    files, size = 0, 0
    for i in range(repeat):
        # alternate which goes first, so a warm or cold cache favours neither
        order = ("orchestrate", "floor") if i % 2 == 0 else ("floor", "orchestrate")
        for which in order:
            root = make_repo(workdir / f"overhead-{which}-{i}", large=True)
            if not files:
                files, size = repo_size(root)
            if which == "orchestrate":
                configure(root, WRITE_ONE, slots)
                queue(root, tasks)
                run = run_process(orchestrate_argv(root, "start", "--until-idle"))
                times.append(run.seconds)
                counts = _counts(root)
                merges = int(subprocess.run(
                    ["git", "rev-list", "--count", "--merges", "refs/heads/orchestrate/integration"],
                    cwd=root, capture_output=True, text=True, check=True,
                ).stdout)  # fmt: skip
                outcome = f"{counts['completed']} completed, {counts['failed']} failed, {merges} merge commits"
            else:
                argv = [PYTHON, "-m", "bench.floor", str(root), "--tasks", str(tasks),
                        "--slots", str(slots), "--", *WRITE_ONE]  # fmt: skip
                floors.append(run_process(argv, cwd=Path(__file__).parent.parent).seconds)
            _remove_repo(root)
    return Overhead(files, size / 1e6, tasks, slots, Figure(times), Figure(floors), outcome)


def _remove_repo(root: Path) -> None:
    subprocess.run(["rm", "-rf", str(root)], check=False)


# ----- 2. dispatch latency ------------------------------------------------------------------


@dataclass
class Dispatch:
    submissions: int
    parts: dict[str, list[float]] = field(default_factory=dict)  # name -> seconds per task


def dispatch(workdir: Path, *, submissions: int) -> Dispatch:
    root = make_repo(workdir / "dispatch")
    stamps = workdir / "dispatch-stamps"
    stamps.mkdir()
    # the agent's first act is to note its own start time
    configure(root, ["sh", "-c", f'date +%s.%N > "{stamps}/$1"', "agent", "{task_id}"], 1)
    stage = root / ".orchestrate" / "stage"
    stage.mkdir(parents=True, exist_ok=True)
    with open(workdir / "dispatch-daemon.log", "wb") as log:
        daemon = subprocess.Popen(
            orchestrate_argv(root, "start"), env=env(), stdout=log, stderr=subprocess.STDOUT
        )
    events = root / ".orchestrate" / "events.jsonl"
    _wait_for(lambda: events.exists() and '"start"' in events.read_text(), 30)
    submitted: dict[str, float] = {}
    completed = root / "tasks" / "completed"
    for i in range(submissions):
        task_id = f"d{i:05d}"
        staged = stage / f"{task_id}.yaml"
        staged.write_text(f"id: {task_id}\ndescription: dispatch {i}\n")
        time.sleep(0.05)  # let the daemon go back to sleep: a submission arrives out of the blue
        submitted[task_id] = time.time()
        os.rename(staged, root / "tasks" / "pending" / f"{task_id}.yaml")
        _wait_for(lambda t=task_id: (completed / f"{t}.yaml").exists(), 30)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)
    result = Dispatch(
        submissions, {k: [] for k in ("detection", "scheduling", "worktree", "spawn", "total")}
    )
    for line in events.read_text().splitlines():
        record = json.loads(line)
        task_id = record.get("task")
        if record.get("event") != "started" or task_id not in submitted:
            continue
        tick, preparing, prepared, _spawned = record["timing"]
        agent_start = float((stamps / task_id).read_text())
        t0 = submitted[task_id]
        result.parts["detection"].append(tick - t0)
        result.parts["scheduling"].append(preparing - tick)
        result.parts["worktree"].append(prepared - preparing)
        result.parts["spawn"].append(agent_start - prepared)
        result.parts["total"].append(agent_start - t0)
    return result


def _wait_for(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark: timed out waiting for the daemon")
        time.sleep(0.002)


# ----- 3. CLI latency ---------------------------------------------------------------------


@dataclass
class CliLatency:
    floor: Figure  # python -c "import click"
    status: dict[int, Figure]
    tasks_json: dict[int, Figure]


def build_tree(root: Path, n: int, slots: int = 4) -> None:
    """``n`` tasks as a long-lived repository holds them: most finished, some queued,
    one running per agent slot (the assigned tasks are what ``status`` reads)."""
    from protocol.task import Assignment, Attempt, MergeInfo, Result, Task, TaskId, utc_iso

    t0 = 1_800_000_000.0
    for i in range(n):
        state = "assigned" if i < slots else ("pending", "failed", *("completed",) * 8)[i % 10]
        stamp = utc_iso(t0 + i)
        task = Task(
            id=TaskId(f"task-{i:05d}"),
            description=f"Implement feature {i} in src/feature_{i}.py with tests.\n",
            depends_on=[TaskId(f"task-{i - 1:05d}")] if i % 10 == 0 and i else [],
            submitted_at=stamp,
        )
        if state != "pending":
            task.attempts = [
                Attempt(
                    number=1,
                    agent_id=f"bench-{i % slots + 1}",
                    agent_type="bench",
                    started_at=stamp,
                )
            ]
        if state == "assigned":
            task.assignment = Assignment(
                agent_id=f"bench-{i + 1}", agent_type="bench", worktree=".orchestrate/worktrees/x",
                branch=f"agent/task-{i:05d}", host="bench", attempt=1, assigned_at=stamp,
                started_at=stamp,
            )  # fmt: skip
        if state in ("completed", "failed"):
            task.attempts[0].ended_at = stamp
            task.result = Result(
                agent_id="bench-1", agent_type="bench", branch=f"agent/task-{i:05d}",
                commit="0" * 40, files_changed=[f"src/feature_{i}.py"],
                output_file=f"context/agent_outputs/task-{i:05d}_output.md",
                error=None if state == "completed" else "tests failed",
                merge=MergeInfo(status="merged", target="orchestrate/integration", commit="1" * 40)
                if state == "completed" else None,
            )  # fmt: skip
        (root / "tasks" / state / f"{task.id}.yaml").write_bytes(task.dump())


def cli_latency(workdir: Path, *, sizes: list[int], repeat: int) -> CliLatency:
    script = Path(PYTHON).parent / "orchestrate"
    entry = [str(script)] if script.exists() else [PYTHON, "-m", "orchestrator"]
    floor_argv = [PYTHON, "-c", "import click"]
    floor: list[float] = []
    status: dict[int, Figure] = {}
    tasks_json: dict[int, Figure] = {}
    for n in sizes:
        root = make_repo(workdir / f"cli-{n}")
        configure(root, NO_OP, 4)
        build_tree(root, n)
        s_times: list[float] = []
        j_times: list[float] = []
        for argv in (floor_argv, [*entry, "-C", str(root), "status"]):
            time_process(argv)  # warm the page cache
        for _ in range(repeat):  # interleaved, so drift in the machine hits all alike
            floor.append(time_process(floor_argv))
            s_times.append(time_process([*entry, "-C", str(root), "status"]))
            if n == max(sizes) or repeat <= 5 or len(j_times) < max(3, repeat // 3):
                j_times.append(time_process([*entry, "-C", str(root), "tasks", "--json"]))
        status[n] = Figure(s_times)
        tasks_json[n] = Figure(j_times)
    return CliLatency(Figure(floor), status, tasks_json)


# ----- 4. scale -----------------------------------------------------------------------------


@dataclass
class ScaleRow:
    tasks: int
    wall: Figure
    per_task_ms: Figure  # daemon wall time per task
    cpu_per_task_ms: Figure  # the daemon's own CPU (not git's, not the agents') per task
    peak_rss_mb: Figure
    outcome: str


def scale(workdir: Path, *, sizes: list[int], repeat: int) -> list[ScaleRow]:
    rows = []
    for n in sizes:
        walls, cpus, peaks = [], [], []
        outcome = ""
        runs = repeat if n <= 1000 else 1
        for i in range(runs):
            root = make_repo(workdir / f"scale-{n}-{i}")
            configure(root, NO_OP, 2)
            queue(root, n)
            run = run_process(orchestrate_argv(root, "start", "--until-idle"), sample=0.2)
            walls.append(run.seconds)
            cpus.append(run.cpu_seconds)
            peaks.append(run.peak_rss / 2**20)
            counts = _counts(root)
            outcome = f"{counts['completed']} completed, {counts['failed']} failed"
            _remove_repo(root)
        rows.append(
            ScaleRow(
                n,
                Figure(walls),
                Figure([w / n for w in walls]),
                Figure([c / n for c in cpus]),
                Figure(peaks),
                outcome,
            )
        )
    return rows


# ----- 5. parallel speedup ------------------------------------------------------------------


@dataclass
class SpeedRow:
    slots: int
    wall: Figure
    ideal: float


def parallel(workdir: Path, *, tasks: int, slot_counts: list[int], repeat: int) -> list[SpeedRow]:
    rows = []
    for slots in slot_counts:
        walls = []
        for i in range(repeat):
            root = make_repo(workdir / f"parallel-{slots}-{i}")
            configure(root, ["sh", "-c", "sleep 2"], slots)
            queue(root, tasks)
            walls.append(run_process(orchestrate_argv(root, "start", "--until-idle")).seconds)
            _remove_repo(root)
        rows.append(SpeedRow(slots, Figure(walls), math.ceil(tasks / slots) * 2.0))
    return rows


def summary(parts: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """name -> (median, p99) in milliseconds."""
    out = {}
    for name, values in parts.items():
        ordered = sorted(values)
        mid = ordered[len(ordered) // 2] if ordered else float("nan")
        out[name] = (mid * 1000, percentile(values, 99) * 1000)
    return out
