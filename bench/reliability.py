"""The reliability scenarios of issue 4, at full or CI size, and the table they produce.

Run: ``python -m bench.reliability [--size full|ci] [--only NAME ...] [--repeat N]
[--markdown docs/reliability-table.md]``

Each scenario builds a real repository in a temporary directory, runs the real
daemon (``python -m orchestrator start``) with the fault agent of
``tests/fault_agent.py``, injects its faults, and ends with the shared invariant
checks of ``tests/faults.py``. The tests in ``tests/test_reliability.py`` call the
same functions at CI size; this module runs them at full size and prints the
table of ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protocol.task import id_from_filename, is_ignored_name
from tests.faults import (
    TARGET,
    DaemonHandle,
    Report,
    check_invariants,
    configure_faults,
    count,
    drop_task,
    fault_description,
    git,
    run_cli,
    task_state,
    tree_snapshot,
    wait_for,
)
from tests.helpers import make_repo


@dataclass
class Outcome:
    """One run of one scenario: the figures for the table and what the checks found."""

    scenario: str
    tasks: int
    faults: int
    report: Report
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "tasks": self.tasks,
            "faults": self.faults,
            "lost": len(self.report.lost),
            "duplicated": len(self.report.duplicated),
            "orphans": len(self.report.orphans),
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "notes": self.notes,
            "problems": self.report.problems[:20],
        }


def _repo(work: Path, *, slots: int, **config: Any) -> Path:
    root = make_repo(work / "repo")
    configure_faults(root, work / "agent-state", slots=slots, **config)
    return root


def _run_to_idle(daemon: DaemonHandle, *, timeout: float) -> int:
    daemon.start(until_idle=True, wait_ready=False)
    return daemon.wait_exit(timeout=timeout)


# ----- 1. crash soak ---------------------------------------------------------------------------


def crash_soak(work: Path, *, tasks: int = 200, kills: int = 30, seed: int = 1) -> Outcome:
    """SIGKILL the daemon at random moments while 3 slots work through ``tasks`` tasks."""
    rng = random.Random(seed)
    slots = 3
    root = _repo(work, slots=slots, max_retries=3)
    ids = [f"soak-{n:04d}" for n in range(tasks)]
    for task_id in ids:
        drop_task(root, task_id, "soak")
    started = time.monotonic()
    # spread the kills over the run: each cycle lets a few tasks finish, then kills
    # at a random instant (mid-agent, mid-merge, mid-transition, during recovery)
    per_kill = max(1, tasks // (kills + kills // 2))
    with DaemonHandle(root) as daemon:
        while daemon.kills < kills and count(root, "completed") < tasks:
            daemon.start()
            goal = min(tasks, count(root, "completed") + rng.randint(0, per_kill))
            wait_for(
                lambda goal=goal: count(root, "completed") >= goal,
                timeout=120,
                what=f"{goal} completed tasks",
            )
            time.sleep(rng.uniform(0.0, 0.25))  # the random instant of the kill
            daemon.kill()
        code = _run_to_idle(daemon, timeout=600)
        kills_done = daemon.kills
    seconds = time.monotonic() - started
    report = check_invariants(root, ids, slots=slots)
    _check_attribution(root, ids, report)
    if code != 0:
        report.problems.append(f"the last 'start --until-idle' exited {code}")
    return Outcome("crash soak", tasks, kills_done, report, seconds, {"kills": kills_done})


def _check_attribution(root: Path, ids: list[str], report: Report) -> None:
    """Each out/<id>.txt was added to the target by a commit of task <id>, not by
    another task's agent that found a stray file in a reused worktree."""
    text = git(
        root, "log", "--diff-filter=A", "--no-merges",
        "--format=@%(trailers:key=Orchestrate-Task,valueonly,separator=%x2C)",
        "--name-only", TARGET, "--", "out",
    )  # fmt: skip
    author = ""
    for line in text.splitlines():
        if line.startswith("@"):
            author = line[1:].strip()
        elif line.startswith("out/"):
            task_id = line[len("out/") : -len(".txt")]
            if task_id in ids and author and author != task_id:
                report.problems.append(f"out/{task_id}.txt was added by task {author}'s commit")


# ----- 2. agent faults -------------------------------------------------------------------------

# behaviour, misbehave on the first attempt only, the state it must end in, words the
# reason must contain
FAULT_CASES: list[tuple[str, bool, str, str]] = [
    ("exit", False, "failed", "exited with code 3"),
    ("exit", True, "completed", ""),
    ("segv", False, "failed", "exited with code -11"),
    ("hang", False, "failed", "timed out"),
    ("orphan", False, "completed", ""),
    ("flood", False, "completed", "log cap"),
    ("rm-worktree", False, "failed", "deleted its worktree"),
    ("rm-worktree", True, "completed", ""),
    ("other-branch", False, "completed", "moved its worktree to stray/"),
    ("detach", False, "completed", "moved its worktree to a detached HEAD"),
    ("rewrite", False, "failed", "rewrote history below its base"),
    ("foreign-commit", False, "failed", "foreign/"),
]


def agent_faults(work: Path, *, flood_mb: int = 200, bystanders: int = 6) -> Outcome:
    """Every misbehaviour once, beside well-behaved tasks that must not notice."""
    slots = 3
    log_cap = 1024 * 1024
    root = _repo(work, slots=slots, max_retries=1, log_cap_bytes=log_cap, flood_mb=flood_mb)
    cases: dict[str, tuple[str, bool, str, str]] = {}
    for n, case in enumerate(FAULT_CASES):
        behaviour, once, _, _ = case
        task_id = f"fault-{n:02d}-{behaviour}{'-once' if once else ''}"
        extra: dict[str, Any] = {"timeout_minutes": 0.03} if behaviour == "hang" else {}
        drop_task(root, task_id, behaviour, once=once, **extra)
        cases[task_id] = case
    calm = [f"calm-{n:02d}" for n in range(bystanders)]
    for task_id in calm:
        drop_task(root, task_id, "ok")
    report = Report()
    started = time.monotonic()
    with DaemonHandle(root) as daemon:
        daemon.start(until_idle=True)
        baseline = daemon.sample_rss()
        while daemon.alive() and time.monotonic() - started < 300:
            daemon.sample_rss()
            time.sleep(0.05)  # a sampling period, not a synchronisation
        daemon.wait_exit(timeout=60)
        peak = daemon.peak_rss
    seconds = time.monotonic() - started
    expected_done = calm + [t for t, c in cases.items() if c[2] == "completed"]
    report = check_invariants(root, [*cases, *calm], slots=slots, completed=expected_done)
    for task_id, (_, _, end_state, words) in cases.items():
        state, data = task_state(root, task_id)
        result = data.get("result") or {}
        text = " ".join(str(result.get(k) or "") for k in ("error", "reason"))
        merge = (result.get("merge") or {}).get("message") or ""
        if state != end_state:
            report.problems.append(f"{task_id}: ended in {state}, expected {end_state}: {text}")
        elif words and words not in text + " " + merge:
            report.problems.append(f"{task_id}: the reason does not say {words!r}: {text!r}")
    for path in (work / "agent-state").glob("*.child.*"):
        pid = int(path.read_text())
        if _alive(pid):
            report.orphans.append(str(pid))
            report.problems.append(f"the orphan child {pid} outlived its agent")
    growth = (peak - baseline) / 2**20
    if growth > 64:
        report.problems.append(f"the daemon grew by {growth:.0f} MB while an agent flooded")
    notes = {"flood_mb": flood_mb, "log_cap_bytes": log_cap, "rss_growth_mb": round(growth, 1)}
    return Outcome("agent faults", len(cases) + len(calm), len(cases), report, seconds, notes)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ----- 3. bad input at volume ------------------------------------------------------------------


@dataclass
class Dropped:
    name: str
    data: bytes
    task_id: str | None  # set when the file is a valid task that should run (or wait)


def generate_bad_inputs(n: int, seed: int) -> list[Dropped]:
    """``n`` hostile files plus a few valid ones, reproducible from ``seed``."""
    rng = random.Random(seed)
    out: list[Dropped] = []

    def yaml_case(i: int, body: str, task_id: str | None = None, name: str | None = None) -> None:
        out.append(Dropped(name or f"bad-{i:05d}.yaml", f"# case {i}\n{body}".encode(), task_id))

    hostile_ids = [
        "../x", "../../etc/passwd", "-rf", "x/y", "/abs", "t\u0430sk", "\uff41bc", "x" * 5000,
        "..", ".", "", " ", "a b", "x.lock", "HEAD@{1}", "x..y", "~x", "$(touch pwned)",
        "`id`", "a\nb", "con", "\u202etxt.exe", "x" * 65, ".hidden", "refs/heads/main",
    ]  # fmt: skip
    wrong_types = [
        "description: 5", "description: [a, b]", "description: {a: b}", "description: ''",
        "description: x\npriority: [1]", "description: x\npriority: urgent",
        "description: x\ndepends_on: {a: b}", "description: x\ndepends_on: [[a]]",
        "description: x\ntimeout_minutes: soon", "description: x\ntimeout_minutes: -1",
        "description: x\ntimeout_minutes: .inf", "description: x\nmax_retries: -1",
        "description: x\nmax_retries: 1.5", "description: x\nassignment: yes",
        "description: x\nattempts: 7", "description: x\nresult: {merge: 3}",
        "description: x\ncontext_files: [/etc/passwd]", "description: x\ncontext_files: [../x]",
        "description: x\nagent: '../x'", "description: x\nsubmitted_at: tomorrow",
        "- a\n- b", "just text", "42", "~", "!!python/object/apply:os.system ['touch pwned']",
        "description: !!binary aGVsbG8=", "? [a]\n: b\ndescription: x",
    ]  # fmt: skip
    valid = "id: {id}\ndescription: |\n  {desc}\npriority: {prio}\n"
    for i in range(n):
        kind = i % 10
        if kind == 0:
            out.append(Dropped(f"bytes-{i:05d}.yaml", rng.randbytes(rng.randint(0, 4096)), None))
        elif kind == 1:
            text = valid.format(id=f"trunc-{i}", desc=fault_description("ok"), prio="high")
            cut = rng.randint(0, len(text) - 1)
            # a cut that still parses is a valid task: it must run, like any other
            yaml_case(i, text[:cut] + "\n  - [unclosed: {")
        elif kind == 2:
            depth = rng.choice([50, 101, 500, 5000, 60000])
            if rng.random() < 0.5:
                yaml_case(i, "description: x\nextra: " + "[" * depth + "]" * depth)
            else:
                yaml_case(i, "description: x\nextra: " + "{a: " * depth + "b" + "}" * depth)
        elif kind == 3:
            size = rng.choice([70_000, 900_000, 1_100_000, 3_000_000])
            yaml_case(i, f"description: {'y' * size}\nid: huge-{i}\n")
        elif kind == 4:
            yaml_case(i, rng.choice(wrong_types))
        elif kind == 5:
            bad_id = rng.choice(hostile_ids)
            yaml_case(i, f"id: {json.dumps(bad_id)}\ndescription: hostile id\n")
        elif kind == 6:
            names = ["-rf.yaml", "x y.yaml", "t\u0430sk.yaml", "n\u00e9.yaml", "..yaml",
                     f"noext-{i}", f"dup-{i}.yml", f"{'z' * 200}-{i}.yaml", f"a;b-{i}.yaml"]  # fmt: skip
            name = rng.choice(names)
            if any(d.name == name for d in out):
                name = f"{i}-{name}"
            yaml_case(i, "description: a file with a hostile name\n", name=name)
        elif kind == 7:
            yaml_case(i, "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
                f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            ) + "description: a billion laughs\n")  # fmt: skip
        elif kind == 8:
            yaml_case(i, "\t- :\n  ]]]: {{{\n" + "".join(rng.choice("-:[]{}&*!|>'\"%@`#, \n\t")
                                                       for _ in range(rng.randint(1, 400))))  # fmt: skip
        else:
            task_id = f"fine-{i:05d}"
            desc = fault_description("ok").replace("\n", "\n  ")
            yaml_case(i, valid.format(id=task_id, desc=desc, prio=rng.choice(["high", "low"])),
                      task_id=task_id)  # fmt: skip
    # a dependency cycle across many tasks: reported and left waiting, never a hang
    ring = max(3, n // 50)
    for k in range(ring):
        task_id = f"ring-{k:03d}"
        nxt = f"ring-{(k + 1) % ring:03d}"
        body = f"id: {task_id}\ndescription: in a cycle\ndepends_on: [{nxt}]\n"
        out.append(Dropped(f"{task_id}.yaml", body.encode(), task_id))
    return out


def bad_input(work: Path, *, files: int = 1200, seed: int = 3) -> Outcome:
    slots = 3
    root = _repo(work, slots=slots, max_retries=0)
    dropped = generate_bad_inputs(files, seed)
    (root / "pwned").unlink(missing_ok=True)
    allowed = [root / d for d in (".git", "tasks", ".orchestrate", "context")]
    before = tree_snapshot(work, skip=[*allowed, work / "agent-state"])
    started = time.monotonic()
    report = Report(tasks=len(dropped))
    with DaemonHandle(root) as daemon:
        daemon.start()
        pending = root / "tasks" / "pending"
        for n, item in enumerate(dropped):
            if n % 2:  # half arrive atomically, half are written in place
                staged = root / "tasks" / ".tmp" / f"drop-{n}.part"
                staged.write_bytes(item.data)
                os.rename(staged, pending / item.name)
            else:
                (pending / item.name).write_bytes(item.data)
        ring = {d.task_id for d in dropped if d.name.startswith("ring-")}

        def settled() -> bool:
            left = {n for n in os.listdir(pending) if not is_ignored_name(n)}
            left -= {f"{t}.yaml" for t in ring}
            return not left and count(root, "assigned") == 0

        try:
            wait_for(settled, timeout=120 + files / 5, what="intake", interval=0.2)
        except AssertionError:
            left = sorted(n for n in os.listdir(pending) if not is_ignored_name(n))
            report.problems.append(f"{len(left)} files never taken in: {left[:20]}")
        if not daemon.alive():
            report.problems.append(f"the daemon stopped:\n{daemon.log_tail()}")
        tasks_json = run_cli(root, "tasks", "--json")
        daemon.stop()
    seconds = time.monotonic() - started
    failed = root / "tasks" / "failed"
    by_hash: dict[str, str] = {}
    for name in os.listdir(failed):
        if not name.endswith(".error"):
            by_hash.setdefault(hashlib.sha256((failed / name).read_bytes()).hexdigest(), name)
    rejected = ran = waiting = ignored = 0
    for item in dropped:
        if is_ignored_name(item.name):  # hidden and editor files are never taken in
            ignored += (pending / item.name).read_bytes() == item.data
            continue
        digest = hashlib.sha256(item.data).hexdigest()
        if digest in by_hash:
            rejected += 1
            if not (failed / (by_hash[digest] + ".error")).exists():
                report.problems.append(f"{item.name}: in tasks/failed without its .error")
            continue
        task_id = item.task_id or _id_of(item.data) or id_from_filename(item.name)
        state = _state_of(root, task_id) if task_id else None
        if state in ("completed", "failed"):
            ran += 1
        elif state == "pending" and task_id in ring:
            waiting += 1
        else:
            report.lost.append(item.name)
            report.problems.append(f"{item.name!r}: neither run nor rejected (state {state})")
    for entry in json.loads(tasks_json.stdout or "[]"):
        if entry["id"] in ring and "cycle" not in json.dumps(entry):
            report.problems.append(f"{entry['id']}: the cycle is not reported: {entry}")
    after = tree_snapshot(work, skip=[*allowed, work / "agent-state"])
    touched = sorted(set(before.items()) ^ set(after.items()))
    if touched:
        report.problems.append(f"paths outside tasks/ created or changed: {touched[:10]}")
    report.orphans = []
    final = check_invariants(root, [], slots=slots)
    report.problems += final.problems
    notes = {"rejected": rejected, "ran": ran, "cycle_waiting": waiting, "ignored": ignored}
    return Outcome("bad input", len(dropped), len(dropped) - ran, report, seconds, notes)


def _id_of(data: bytes) -> str | None:
    try:
        loaded = yaml.safe_load(data)
    except Exception:
        return None
    if isinstance(loaded, dict) and isinstance(loaded.get("id"), str):
        return str(loaded["id"])
    return None


def _state_of(root: Path, task_id: str) -> str | None:
    try:
        return task_state(root, task_id)[0]
    except (AssertionError, OSError, ValueError):
        return None


# ----- 4. beside a busy user -------------------------------------------------------------------


class BusyUser(threading.Thread):
    """A developer at work in the repository's own checkout: commits on the branch they
    have checked out, switches branches, stashes, makes and deletes branches, runs gc.
    Every git command they run is recorded; a failure is a failure of the daemon."""

    def __init__(self, root: Path, seed: int) -> None:
        super().__init__(name="busy-user", daemon=True)
        self.root = root
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.commands = 0
        self.failures: list[str] = []
        self.commits: dict[str, list[str]] = {"main": []}  # branch -> files committed
        self.gcs = 0

    def git(self, *args: str) -> str:
        self.commands += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(GIT_AUTHOR_NAME="Busy User", GIT_AUTHOR_EMAIL="busy@example.com",
                   GIT_COMMITTER_NAME="Busy User", GIT_COMMITTER_EMAIL="busy@example.com")  # fmt: skip
        result = subprocess.run(["git", *args], cwd=self.root, env=env, capture_output=True,
                                text=True, check=False)  # fmt: skip
        if result.returncode != 0:
            self.failures.append(f"git {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def commit(self, branch: str, n: int) -> None:
        path = self.root / "user" / f"{branch.replace('/', '-')}-{n}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"user work {n} on {branch}\n")
        self.git("add", str(path.relative_to(self.root)))
        self.git("commit", "-q", "-m", f"user: {path.name}")
        self.commits.setdefault(branch, []).append(str(path.relative_to(self.root)))

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            action = n % 5
            if action == 0:
                self.commit("main", n)
            elif action == 1:
                branch = f"feature/{n}"
                self.git("switch", "-q", "-c", branch)
                self.commit(branch, n)
                self.git("switch", "-q", "main")
            elif action == 2:
                (self.root / "README.md").write_text(f"# Project\n\nedited {n}\n")
                self.git("stash", "push", "-q")
                self.git("stash", "pop", "-q")
                self.git("checkout", "-q", "--", "README.md")
            elif action == 3:
                self.git("branch", f"scratch-{n}")
                self.git("branch", "-D", f"scratch-{n}")
            elif self.rng.random() < 0.3:
                self.git("gc", "--quiet")
                self.gcs += 1


def busy_user(work: Path, *, tasks: int = 100, seed: int = 4) -> Outcome:
    slots = 3
    root = _repo(work, slots=slots, max_retries=0)
    ids = [f"busy-{n:04d}" for n in range(tasks)]
    for task_id in ids:
        drop_task(root, task_id, "ok")
    user = BusyUser(root, seed)
    started = time.monotonic()
    with DaemonHandle(root) as daemon:
        daemon.start(until_idle=True)
        user.start()
        code = daemon.wait_exit(timeout=900)
        user.halt.set()
        user.join(timeout=60)
    seconds = time.monotonic() - started
    report = check_invariants(root, ids, slots=slots)
    if code != 0:
        report.problems.append(f"'start --until-idle' exited {code}: {daemon.log_tail(10)}")
    for failure in user.failures:
        report.problems.append(f"the user's command failed: {failure}")
    for branch, files in user.commits.items():
        present = set(git(root, "ls-tree", "-r", "--name-only", branch, "--", "user").split())
        for path in files:
            if path not in present:
                report.problems.append(f"the user's {path} is missing from {branch}")
    if git(root, "symbolic-ref", "HEAD").strip() != "refs/heads/main":
        report.problems.append("the user's HEAD moved")
    notes = {"user_git_commands": user.commands, "user_gc_runs": user.gcs,
             "user_failures": len(user.failures)}  # fmt: skip
    return Outcome("beside a busy user", tasks, user.commands, report, seconds, notes)


# ----- 5. contention ---------------------------------------------------------------------------


def _launch(argvs: list[list[str]], go: Path) -> list[subprocess.Popen[str]]:
    """Start every argv at once: each waits for ``go`` to appear, then execs, so they
    race for real. Returns once ``go`` is given."""
    barrier = (
        "import os, sys, time\n"
        "ready, go = sys.argv[1], sys.argv[2]\n"
        "open(ready, 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists(go) and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)\n"
        "os.execv(sys.argv[3], sys.argv[3:])\n"
    )
    procs = []
    for n, argv in enumerate(argvs):
        ready = go.parent / f"{go.name}.ready.{n}"
        procs.append((ready, subprocess.Popen(
            [sys.executable, "-c", barrier, str(ready), str(go), *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(), cwd=Path(__file__).resolve().parent.parent,
        )))  # fmt: skip
    wait_for(lambda: all(r.exists() for r, _ in procs), timeout=60, what="racers ready")
    go.touch()
    return [proc for _, proc in procs]


def _racers(argvs: list[list[str]], go: Path, *, timeout: float = 120.0) -> list[tuple[int, str]]:
    """(exit code, output) of each argv, all started at once."""
    results = []
    for proc in _launch(argvs, go):
        out, _ = proc.communicate(timeout=timeout)
        results.append((proc.returncode, out))
    return results


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def contention(work: Path, *, rounds: int = 3, adders: int = 20, droppers: int = 20) -> Outcome:
    slots = 3
    root = _repo(work, slots=slots, max_retries=0)
    report = Report()
    started = time.monotonic()
    faults = 0
    cli = [sys.executable, "-m", "orchestrator", "-C", str(root)]
    # two starts at once: exactly one runs, the other names the pid that holds the lock
    for r in range(rounds):
        procs = _launch([[*cli, "start"]] * 2, work / f"go-start-{r}")
        faults += 1
        wait_for(lambda procs=procs: any(p.poll() is not None for p in procs), timeout=60,
                   what="one of two starts to give way")  # fmt: skip
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        out = loser.communicate()[0]
        if winner.poll() is not None or loser.returncode != 1 or "already running" not in out:
            report.problems.append(f"round {r}: both starts ran or both failed: {out!r}")
        elif f"pid {winner.pid}" not in out:
            report.problems.append(
                f"round {r}: the refusal does not name pid {winner.pid}: {out!r}"
            )
        winner.terminate()  # SIGTERM: the warm stop
        winner.communicate(timeout=60)
    # a pid file left by a killed daemon, and one naming a live unrelated process
    with DaemonHandle(root) as daemon:
        daemon.start()
        daemon.kill()
        faults += 1
        if not (root / ".orchestrate" / "daemon.pid").exists():
            report.problems.append("the killed daemon left no pid file (the test needs one)")
        daemon.start()
        daemon.stop()
        (root / ".orchestrate" / "daemon.pid").write_text(f"{os.getpid()}\n")
        faults += 1
        daemon.start()
        # 20 'orchestrate add' and 20 droppers at once, while the daemon runs
        go = work / "go-submit"
        dropper = (
            "import os, sys, pathlib\n"
            "root, task_id, desc = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
            "tmp = root / 'tasks' / '.tmp' / (task_id + '.yaml.part')\n"
            "tmp.write_text(f'id: {task_id}\\ndescription: |\\n  {desc}\\n')\n"
            "os.rename(tmp, root / 'tasks' / 'pending' / (task_id + '.yaml'))\n"
            "print(task_id)\n"
        )
        desc = fault_description("ok").replace("\n", " ")
        argvs = []
        for n in range(adders):
            explicit = ["--id", f"added-{n:02d}"] if n % 2 else []
            argvs.append([*cli, "add", desc, *explicit])
        for n in range(droppers):
            argvs.append([sys.executable, "-c", dropper, str(root), f"dropped-{n:02d}", desc])
        results = _racers(argvs, go)
        faults += len(argvs)
        ids = []
        for code, out in results:
            if code != 0:
                report.problems.append(f"a submitter failed ({code}): {out}")
            else:
                ids.append(out.strip().splitlines()[-1])
        if len(set(ids)) != len(ids):
            report.problems.append(f"two submitters got the same id: {sorted(ids)}")
        wait_for(
            lambda: count(root, "completed") + count(root, "failed") >= len(ids),
            timeout=300, what="every submitted task to finish", interval=0.1,
        )  # fmt: skip
        daemon.stop()
    seconds = time.monotonic() - started
    final = check_invariants(root, ids, slots=slots)
    report.problems += final.problems
    report.lost, report.duplicated, report.orphans = final.lost, final.duplicated, final.orphans
    notes = {"start_races": rounds, "submitters": len(argvs)}
    return Outcome("contention", len(ids), faults, report, seconds, notes)


# ----- 6. load -----------------------------------------------------------------------------------


def load(work: Path, *, tasks: int = 1000, slots: int = 4) -> Outcome:
    root = _repo(work, slots=slots, max_retries=0)
    ids = [f"load-{n:05d}" for n in range(tasks)]
    for task_id in ids:
        drop_task(root, task_id, "ok")
    started = time.monotonic()
    with DaemonHandle(root) as daemon:
        daemon.start()
        deadline = time.monotonic() + 3600
        while count(root, "completed") + count(root, "failed") < tasks:
            daemon.sample_rss()
            if time.monotonic() > deadline or not daemon.alive():
                break
            time.sleep(0.2)  # a sampling period for the memory figure
        daemon.sample_rss()
        seconds = time.monotonic() - started
        daemon.stop()
        peak = daemon.peak_rss
    report = check_invariants(root, ids, slots=slots)
    notes = {"slots": slots, "wall_seconds": round(seconds, 1),
             "tasks_per_second": round(tasks / seconds, 2),
             "peak_rss_mb": round(peak / 2**20, 1)}  # fmt: skip
    return Outcome("load", tasks, 0, report, seconds, notes)


# ----- the table -------------------------------------------------------------------------------

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "crash_soak": {"tasks": 200, "kills": 30},
        "agent_faults": {"flood_mb": 200},
        "bad_input": {"files": 1200},
        "busy_user": {"tasks": 100},
        "contention": {"rounds": 5},
        "load": {"tasks": 1000},
    },
    "ci": {
        "crash_soak": {"tasks": 40, "kills": 8},
        "agent_faults": {"flood_mb": 200},
        "bad_input": {"files": 1000},
        "busy_user": {"tasks": 30},
        "contention": {"rounds": 2},
        "load": {"tasks": 150},
    },
}
SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "crash_soak": crash_soak,
    "agent_faults": agent_faults,
    "bad_input": bad_input,
    "busy_user": busy_user,
    "contention": contention,
    "load": load,
}


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"Produced by `{command}` on {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        "| scenario | runs | tasks | faults injected | tasks lost | tasks duplicated "
        "| orphan processes left | passed | seconds | figures |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["scenario"], []).append(row)
    for name, group in by_name.items():
        last = group[-1]
        figures = ", ".join(f"{k} {v}" for k, v in last["notes"].items())
        lines.append(
            f"| {name} | {len(group)} | {last['tasks']} | {sum(r['faults'] for r in group)} "
            f"| {sum(r['lost'] for r in group)} | {sum(r['duplicated'] for r in group)} "
            f"| {sum(r['orphans'] for r in group)} | {'yes' if all(r['ok'] for r in group) else 'NO'} "
            f"| {max(r['seconds'] for r in group)} | {figures} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--markdown", type=Path, help="Also write the table to this file.")
    parser.add_argument("--keep", action="store_true", help="Keep the scenario directories.")
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or list(SCENARIOS):
        for r in range(args.repeat):
            work = Path(tempfile.mkdtemp(prefix=f"orchestrate-{name}-"))
            try:
                outcome = SCENARIOS[name](work, **SIZES[args.size][name])
            finally:
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
            row = outcome.row()
            rows.append(row)
            status = "ok" if outcome.ok else "FAILED"
            print(f"{name} run {r + 1}: {status} {json.dumps(row)}", file=sys.stderr, flush=True)
    command = "python -m bench.reliability " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(rows, command.strip())
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
