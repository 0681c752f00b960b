"""What the coordinator benchmarks share: repositories, whole-process timing, figures.

Every figure comes from whole processes (``python -m orchestrator ...`` or the
floor script), started the way a user starts them, so interpreter start-up and
imports count. Nothing here asserts: a benchmark reports, tests judge.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

# The large benchmark repository is built from real projects' source: the sdists
# of Django 5.1.4 and SymPy 1.13.3 (8,791 files, 75 MB unpacked). They are fetched
# once by pip, at install time, into a cache outside any git repository; nothing
# is downloaded while the benchmark runs, and the archives are never committed.
SDISTS = {"django==5.1.4": "Django-5.1.4.tar.gz", "sympy==1.13.3": "sympy-1.13.3.tar.gz"}
CACHE_DIR = Path(
    os.environ.get("ORCHESTRATE_BENCH_CACHE", Path.home() / ".cache" / "orchestrate-bench")
)
FETCH_COMMAND = (
    f"pip download --no-deps --no-binary :all: {' '.join(SDISTS)} -d ~/.cache/orchestrate-bench"
)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}
TARGET = "orchestrate/integration"
PYTHON = sys.executable


def env() -> dict[str, str]:
    """The benchmark's processes run as an installed orchestrate does: with bytecode
    caching (pip compiles on install). A PYTHONDONTWRITEBYTECODE left in the
    environment would make every process compile orchestrate's modules from source,
    while click and PyYAML come precompiled; the cache goes outside the repository."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    out.update(GIT_ENV)
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out["PYTHONPYCACHEPREFIX"] = str(CACHE_DIR / "pycache")
    return out


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ("git", *args), cwd=cwd, env=env(), capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def orchestrate_argv(root: Path, *args: str) -> list[str]:
    return [PYTHON, "-m", "orchestrator", "-C", str(root), *args]


# ----- repositories ------------------------------------------------------------------


def large_sources() -> list[Path] | None:
    paths = [CACHE_DIR / name for name in SDISTS.values()]
    return paths if all(p.is_file() for p in paths) else None


def _template(sdists: list[Path]) -> Path:
    """A committed repository of the sdists' files, built once and kept in the cache."""
    name = "+".join(p.name.removesuffix(".tar.gz") for p in sdists)
    template = CACHE_DIR / f"repo-{name}"
    if (template / ".git" / "bench-ready").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    for sdist in sdists:
        with tarfile.open(sdist) as archive:
            archive.extractall(template, filter="data")
    git(template, "init", "-q", "-b", "main")
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", f"import {name}")
    (template / ".git" / "bench-ready").write_text("")
    return template


def make_repo(dest: Path, *, large: bool = False) -> Path:
    """A git repository with one commit, initialised for orchestrate (no agents yet)."""
    if large:
        sdists = large_sources()
        if sdists is None:
            raise SystemExit(f"the large repository needs its source first: {FETCH_COMMAND}")
        subprocess.run(
            ["git", "clone", "-q", "--branch", "main", str(_template(sdists)), str(dest)],
            env=env(),
            check=True,
        )
    else:
        dest.mkdir(parents=True)
        git(dest, "init", "-q", "-b", "main")
        (dest / "README.md").write_text("# bench\n")
        git(dest, "add", "-A")
        git(dest, "commit", "-q", "-m", "first")
    git(dest, "config", "user.name", "bench")
    git(dest, "config", "user.email", "bench@localhost")
    subprocess.run(orchestrate_argv(dest, "init"), env=env(), check=True, capture_output=True)
    return dest


def repo_size(root: Path) -> tuple[int, int]:
    """(tracked files, their bytes) of HEAD."""
    files = git(root, "ls-files", "-z").split("\0")
    total = sum((root / f).stat().st_size for f in files if f)
    return len([f for f in files if f]), total


def configure(root: Path, command: Sequence[str], slots: int, **limits: float) -> None:
    """Write orchestrate.yaml with one agent type ``bench`` running ``command``."""
    argv = ", ".join(_yaml_str(a) for a in command)
    lines = [
        "agents:",
        "  bench:",
        f"    command: [{argv}]",
        f"    max_instances: {slots}",
        "merge:",
        f"  target: {TARGET}",
        "defaults:",
        "  max_retries: 0",
    ]
    if limits:
        lines.append("limits:")
        lines += [f"  {key}: {value}" for key, value in limits.items()]
    (root / "orchestrate.yaml").write_text("\n".join(lines) + "\n")


def _yaml_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def queue(root: Path, n: int, prefix: str = "t") -> list[str]:
    """Write ``n`` task files straight into tasks/pending (a queue built before the run)."""
    pending = root / "tasks" / "pending"
    ids = [f"{prefix}{i:05d}" for i in range(n)]
    for task_id in ids:
        (pending / f"{task_id}.yaml").write_text(
            f"id: {task_id}\ndescription: write one file for {task_id}\n"
        )
    return ids


# ----- processes -----------------------------------------------------------------------


@dataclass
class ProcessRun:
    seconds: float
    code: int
    peak_rss: int  # bytes, the process itself (not its children)
    cpu_seconds: float  # the process's own user + system time
    stdout: str


def run_process(
    argv: Sequence[str], *, cwd: Path | None = None, sample: float = 0.05
) -> ProcessRun:
    """Run one whole process; wall time, and its own peak memory and CPU (psutil)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    peak, cpu = 0, 0.0
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else b""))
    reader.start()
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            with watched.oneshot():
                peak = max(peak, watched.memory_info().rss)
                times = watched.cpu_times()
                cpu = times.user + times.system
            peak = max(peak, _hwm(proc.pid))
        except psutil.Error:
            pass
        time.sleep(sample)
    seconds = time.perf_counter() - started
    reader.join()
    return ProcessRun(seconds, proc.returncode, peak, cpu, b"".join(out).decode(errors="replace"))


def _hwm(pid: int) -> int:
    """The kernel's own peak resident size (VmHWM), between psutil's samples."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def time_process(argv: Sequence[str], *, cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(list(argv), cwd=cwd, env=env(), stdout=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


# ----- figures --------------------------------------------------------------------------


@dataclass
class Figure:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def ms(self, digits: int = 0) -> str:
        """'median (min-max)' in milliseconds."""
        v = [x * 1000 for x in self.values]
        f = f"{{:,.{digits}f}}"
        if len(v) == 1:
            return f"{f.format(v[0])} ms"
        return f"{f.format(statistics.median(v))} ms ({f.format(min(v))}-{f.format(max(v))})"

    def s(self, digits: int = 2) -> str:
        f = f"{{:,.{digits}f}}"
        if len(self.values) == 1:
            return f"{f.format(self.values[0])} s"
        return (
            f"{f.format(self.median)} s ({f.format(min(self.values))}-{f.format(max(self.values))})"
        )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    git_version = git(Path.cwd(), "version").removeprefix("git version ")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, git {git_version}"
    )
