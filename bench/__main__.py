"""The coordinator's cost against its floor: ``python -m bench [--quick] [--only NAME ...]``.

Five measurements (issue 6), each beside a floor measured in the same run:
``overhead`` (200 tasks on a large repository vs the bare git work), ``dispatch``
(file renamed into tasks/pending -> agent running, split in four), ``cli``
(``status`` and ``tasks --json`` vs ``python -c "import click"``), ``scale``
(100 vs 10,000 queued tasks) and ``parallel`` (1, 2, 5, 10 slots of a 2 s agent).
Prints a table per measurement and rewrites its section of docs/benchmarks.md.
The large repository needs, once, at install time::

    pip download --no-deps --no-binary :all: django==5.1.4 sympy==1.13.3 -d ~/.cache/orchestrate-bench
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import coordinator as co
from bench.common import FETCH_COMMAND, large_sources, machine

NAMES = ("overhead", "dispatch", "cli", "scale", "parallel")
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _ratio(value: float, target: float, better: str = "<=") -> str:
    held = value <= target if better == "<=" else value >= target
    return f"{value:.2f}x (target {better} {target:g}x: {'holds' if held else 'does not hold'})"


def run_overhead(work: Path, quick: bool) -> list[str]:
    tasks, repeat = (50, 1) if quick else (200, 3)
    if large_sources() is None:
        return [f"Skipped: the large repository's source is not cached; run `{FETCH_COMMAND}`."]
    r = co.overhead(work, tasks=tasks, slots=2, repeat=repeat)
    return [
        f"Repository: the Django 5.1.4 and SymPy 1.13.3 sdists committed as one tree ({r.files:,} files, "
        f"{r.megabytes:.0f} MB). {r.tasks} tasks, {r.slots} slots, an agent that writes one "
        f"file; {repeat} run(s) of each, alternating which goes first.",
        "",
        "| run | wall time, median (min-max) | per task |",
        "|---|---:|---:|",
        f"| `orchestrate start --until-idle` | {r.orchestrate.s()} | {r.orchestrate.median / r.tasks * 1000:.0f} ms |",
        f"| floor: `python -m bench.floor` (checkout -B, agent, add, commit, merge-tree, commit-tree, update-ref) | {r.floor.s()} | {r.floor.median / r.tasks * 1000:.0f} ms |",
        "",
        f"Ratio {_ratio(r.ratio, 1.5)}; the coordinator adds {r.per_task_ms:.0f} ms per task. "
        f"Outcome: {r.outcome}.",
    ]


def run_dispatch(work: Path, quick: bool) -> list[str]:
    n = 40 if quick else 200
    d = co.dispatch(work, submissions=n)
    s = co.summary(d.parts)
    rows = [
        ("detection", "rename into tasks/pending -> the daemon's tick begins (inotify wake-up)"),
        (
            "scheduling",
            "intake (read, validate), plan, target lookup, claim (rename to assigned), hand-off to the slot's worker",
        ),
        (
            "worktree",
            "on the worker: pooled worktree reset to a fresh branch (git checkout -B, clean)",
        ),
        (
            "spawn",
            "back in the loop: prompt written, process started, until the agent's first instruction runs",
        ),
        ("total", "rename -> agent running"),
    ]
    out = [
        f"{len(d.parts['total'])} single submissions to an idle daemon (1 slot, small repository); "
        "each file is staged elsewhere on the same filesystem and renamed in; the agent "
        "(`sh -c 'date +%s.%N > ...'`) writes its own start time.",
        "",
        "| part | what | median | p99 |",
        "|---|---|---:|---:|",
    ]
    out += [
        f"| {name} | {what} | {s[name][0]:.1f} ms | {s[name][1]:.1f} ms |" for name, what in rows
    ]
    rest = s["total"][0] - s["worktree"][0]
    out += [
        "",
        f"Everything but the worktree: {rest:.1f} ms at the median "
        f"(target < 20 ms: {'holds' if rest < 20 else 'does not hold'}).",
    ]
    return out


def run_cli(work: Path, quick: bool) -> list[str]:
    sizes, repeat = ([100, 1000, 10000], 5) if quick else ([100, 1000, 10000], 15)
    c = co.cli_latency(work, sizes=sizes, repeat=repeat)
    floor = c.floor.median
    out = [
        f"Whole processes, {repeat} runs each, interleaved with the floor "
        f'`python -c "import click"` ({c.floor.ms()}); trees of 90% finished tasks, '
        "10% queued and 4 running. The installed console script `orchestrate` is timed.",
        "",
        "| tasks | `status` | ratio | `tasks --json` | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        st, tj = c.status[n], c.tasks_json[n]
        out.append(
            f"| {n:,} | {st.ms()} | {st.median / floor:.2f}x | {tj.ms()} | {tj.median / floor:.1f}x |"
        )
    worst = max(c.status[n].median for n in sizes) / floor
    out += [
        "",
        f"`status`, worst size: {_ratio(worst, 1.5)}. "
        f"`tasks --json` at {max(sizes):,}: {_ratio(c.tasks_json[max(sizes)].median / floor, 5)}.",
    ]
    return out


def run_scale(work: Path, quick: bool) -> list[str]:
    sizes, repeat = ([100, 1000], 1) if quick else ([100, 10000], 3)
    rows = co.scale(work, sizes=sizes, repeat=repeat)
    out = [
        "Queued tasks with a no-op agent (`true`), 2 slots, small repository, run to the end "
        "by `orchestrate start --until-idle`. Per-task figures are the daemon's wall time and "
        "its own CPU time (psutil; git and the agents excluded) divided by the tasks; the "
        f"largest size runs once, smaller ones {repeat} times.",
        "",
        "| tasks | wall | wall per task | daemon CPU per task | daemon peak RSS | outcome |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.tasks:,} | {r.wall.s(1)} | {r.per_task_ms.median * 1000:.1f} ms | "
            f"{r.cpu_per_task_ms.median * 1000:.1f} ms | {r.peak_rss_mb.median:.0f} MB | {r.outcome} |"
        )
    ratio = rows[-1].per_task_ms.median / rows[0].per_task_ms.median
    out += [
        "",
        f"Per-task time at {rows[-1].tasks:,} against {rows[0].tasks:,}: {_ratio(ratio, 1.2)}.",
    ]
    return out


def run_parallel(work: Path, quick: bool) -> list[str]:
    repeat = 1 if quick else 3
    rows = co.parallel(work, tasks=20, slot_counts=[1, 2, 5, 10], repeat=repeat)
    base = rows[0].wall.median
    out = [
        f"20 tasks whose agent sleeps 2 s, small repository, {repeat} run(s) per slot count.",
        "",
        "| slots | wall | ideal | speedup | ideal speedup |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.slots} | {r.wall.s()} | {r.ideal:.0f} s | {base / r.wall.median:.2f}x | {40 / r.ideal:.0f}x |"
        )
    out += ["", f"Speedup with 10 slots: {_ratio(base / rows[-1].wall.median, 8, '>=')}."]
    return out


TITLES = {
    "overhead": "Per-task overhead on a large repository",
    "dispatch": "Dispatch latency",
    "cli": "CLI latency",
    "scale": "Scale: 100 against 10,000 queued tasks",
    "parallel": "Parallel speedup",
}
RUNNERS = {
    "overhead": run_overhead,
    "dispatch": run_dispatch,
    "cli": run_cli,
    "scale": run_scale,
    "parallel": run_parallel,
}


def write_section(name: str, body: list[str], header: str) -> None:
    """Replace this measurement's marked block in docs/benchmarks.md (or append it)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = "\n".join([start, f"### {TITLES[name]}", "", header, "", *body, end])
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks and runs")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-"))
    command = "python -m bench" + (" --quick" if args.quick else "")
    if set(args.only) != set(NAMES):
        command += " --only " + " ".join(args.only)
    print(f"machine: {machine()}\nscratch: {work}\n")
    try:
        for name in args.only:
            started = time.monotonic()
            body = RUNNERS[name](work / name, args.quick)
            took = time.monotonic() - started
            header = (
                f"Machine: {machine()}. Command: `{command}`, "
                f"{time.strftime('%Y-%m-%d')}, {took:.0f} s."
            )
            print(f"## {TITLES[name]}\n\n" + "\n".join(body) + "\n", flush=True)
            if not args.no_write:
                write_section(name, body, header)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
