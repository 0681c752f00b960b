"""A fake coding agent with named misbehaviours, run as a real process by the runner.

The behaviour is named in the task's description as ``fault:<name>``; without one
the agent behaves (``ok``). A task whose description also says ``once`` misbehaves
on its first attempt only, so a retry can be seen to succeed. Every behaviour that
finishes writes ``out/<task id>.txt``, so the target branch shows which tasks' work
arrived. Stdlib only: it starts fast and runs under any interpreter.

Behaviours (see ``tests/faults.py`` for what the coordinator must do about each):
  ok              write the task's file, exit 0
  soak            sleep a random 0-300 ms, then as ok
  exit            write the file, exit 3
  segv            write the file, kill itself with SIGSEGV
  hang            ignore SIGTERM and sleep until killed
  orphan          start a child in its process group that would outlive it, then as ok
  flood           print FAULT_FLOOD_MB (default 200) MB to stdout, then as ok
  rm-worktree     delete its own worktree, exit 0
  other-branch    switch to a new branch 'stray/<id>', commit there, exit 0
  detach          detach HEAD, commit, exit 0
  rewrite         reset below its base commit (an orphan root), commit, exit 0
  foreign-commit  commit on a branch that is not its own, leave its own untouched, exit 0
  idle            change nothing, exit 0
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TASK = os.environ["ORCHESTRATE_TASK_ID"]
STATE = Path(os.environ.get("FAULT_STATE", os.devnull))


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def write_own_file() -> None:
    out = Path("out")
    out.mkdir(exist_ok=True)
    (out / f"{TASK}.txt").write_text(f"{TASK}\n")


def commit(message: str) -> None:
    git("add", "-A")
    git("commit", "-q", "-m", message)


def record(kind: str, value: object) -> None:
    """Leave a note for the test in FAULT_STATE (pids of children, attempts)."""
    if STATE.is_dir():
        (STATE / f"{TASK}.{kind}.{os.getpid()}").write_text(f"{value}\n")


def chosen_behaviour(prompt: str) -> str:
    match = re.search(r"fault:([a-z-]+)", prompt)
    name = match.group(1) if match else "ok"
    if "once" in prompt.split() and STATE.is_dir():
        marker = STATE / f"{TASK}.misbehaved"
        if marker.exists():
            return "ok"
        marker.touch()
    return name


def main() -> int:
    prompt = Path(os.environ["ORCHESTRATE_PROMPT_FILE"]).read_text(encoding="utf-8")
    behaviour = chosen_behaviour(prompt)
    record("run", behaviour)
    if behaviour == "soak":
        time.sleep(random.uniform(0.0, 0.3))
    elif behaviour == "exit":
        write_own_file()
        print(f"agent {TASK}: giving up with code 3", flush=True)
        return 3
    elif behaviour == "segv":
        write_own_file()
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
    elif behaviour == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record("hang", os.getpid())
        while True:
            time.sleep(60)
    elif behaviour == "orphan":
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        record("child", child.pid)
    elif behaviour == "flood":
        block = (b"x" * 1023 + b"\n") * 1024
        for _ in range(int(os.environ.get("FAULT_FLOOD_MB", "200"))):
            sys.stdout.buffer.write(block)
        sys.stdout.flush()
    elif behaviour == "rm-worktree":
        shutil.rmtree(os.getcwd())
        return 0
    elif behaviour == "other-branch":
        git("switch", "-q", "-c", f"stray/{TASK}")
    elif behaviour == "detach":
        git("switch", "-q", "--detach")
    elif behaviour == "rewrite":
        # a new root commit with the task's file, and the branch reset onto it
        write_own_file()
        git("add", "-A")
        root = git("commit-tree", git("write-tree"), "-m", f"task {TASK}: history rewritten")
        git("reset", "-q", "--hard", root)
        return 0
    elif behaviour == "idle":
        return 0
    elif behaviour == "foreign-commit":
        own = git("symbolic-ref", "HEAD")
        git("switch", "-q", "-c", f"foreign/{TASK}")
        write_own_file()
        commit(f"task {TASK}: on a branch not its own")
        git("switch", "-q", own.removeprefix("refs/heads/"))
        return 0
    write_own_file()
    if behaviour in ("other-branch", "detach"):
        commit(f"task {TASK}: committed away from its branch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
