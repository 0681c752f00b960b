"""The only module that talks to git.

Every call is an argv list with an explicit ``cwd``; inherited GIT_DIR-style
variables are stripped so a hook or a user's shell cannot redirect us. Calls that
lose a race for ``index.lock`` or a ref lock against the user's own git work wait
and try again instead of failing a task.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import OrchestrateError

MIN_GIT = (2, 38)  # merge-tree --write-tree
ORCHESTRATE_NAME = "orchestrate"
ORCHESTRATE_EMAIL = "orchestrate@localhost"
_STRIPPED = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
)
# the last: a user's 'git gc' removes an empty objects/xx directory while we write
# an object into it, which git does not retry by itself
_LOCK_CONTENTION = re.compile(
    r"index\.lock|cannot lock ref|Unable to create '.*\.lock'|unable to lock|"
    r"could not lock config file|Another git process seems to be running|"
    r"unable to create temporary file",
)


class GitError(OrchestrateError):
    def __init__(self, args: Sequence[str], cwd: Path, code: int, stdout: str, stderr: str) -> None:
        self.args_list = list(args)
        self.cwd = cwd
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        detail = stderr.strip() or stdout.strip()
        super().__init__(
            f"git {' '.join(args)} failed with exit code {code} in {cwd}: {detail[-2000:]}"
        )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def orchestrate_identity(author_name: str = ORCHESTRATE_NAME) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": author_name,
        "GIT_AUTHOR_EMAIL": ORCHESTRATE_EMAIL,
        "GIT_COMMITTER_NAME": ORCHESTRATE_NAME,
        "GIT_COMMITTER_EMAIL": ORCHESTRATE_EMAIL,
    }


@dataclass(frozen=True)
class Completed:
    code: int
    stdout: str
    stderr: str


class Git:
    """git commands run in one directory (the repository or one of its worktrees)."""

    def __init__(self, cwd: Path, *, lock_wait_seconds: float = 30.0) -> None:
        self.cwd = Path(cwd)
        self.lock_wait_seconds = lock_wait_seconds

    def at(self, cwd: Path) -> Git:
        return Git(cwd, lock_wait_seconds=self.lock_wait_seconds)

    def run(
        self,
        *args: str,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> Completed:
        deadline = time.monotonic() + self.lock_wait_seconds
        delay = 0.02
        full_env = clean_env(env)
        while True:
            proc = subprocess.run(
                ("git", *args),
                cwd=self.cwd,
                env=full_env,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
            )
            if proc.returncode in ok_codes or not check:
                return Completed(proc.returncode, proc.stdout, proc.stderr)
            if _LOCK_CONTENTION.search(proc.stderr) and time.monotonic() < deadline:
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)
                continue
            raise GitError(args, self.cwd, proc.returncode, proc.stdout, proc.stderr)

    def out(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        return self.run(*args, env=env).stdout.strip()

    # ----- queries --------------------------------------------------------------------

    def rev_parse(self, rev: str) -> str | None:
        result = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        return result.stdout.strip() if result.code == 0 else None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return (
            self.run("merge-base", "--is-ancestor", ancestor, descendant, ok_codes=(0, 1)).code == 0
        )

    def changed_files(self, base: str, head: str) -> list[str]:
        text = self.out("diff", "--name-only", "--no-renames", base, head)
        return [line for line in text.splitlines() if line]

    def symbolic_head(self) -> str | None:
        result = self.run("symbolic-ref", "-q", "HEAD", check=False)
        return result.stdout.strip() if result.code == 0 else None

    def has_uncommitted(self) -> bool:
        return bool(self.out("status", "--porcelain", "--untracked-files=all"))

    def checked_out_branches(self) -> dict[str, Path]:
        """refs/heads/<x> -> the worktree that has it checked out (the user's included)."""
        text = self.out("worktree", "list", "--porcelain")
        found: dict[str, Path] = {}
        path: Path | None = None
        for line in text.splitlines():
            if line.startswith("worktree "):
                path = Path(line[len("worktree ") :])
            elif line.startswith("branch ") and path is not None:
                found[line[len("branch ") :]] = path
        return found

    def version(self) -> tuple[int, ...]:
        text = self.out("version")
        match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not match:
            raise OrchestrateError(f"cannot read the git version from {text!r}")
        return tuple(int(p) for p in match.groups() if p is not None)

    # ----- writes ---------------------------------------------------------------------

    def update_ref(self, ref: str, new: str, old: str | None, message: str) -> bool:
        """Move ``ref`` from ``old`` to ``new``; False if it was not at ``old`` any more."""
        args = ["update-ref", "-m", message, ref, new]
        if old is not None:
            args.append(old)
        else:
            args.append("0" * 40)  # the ref must not exist yet
        result = self.run(*args, check=False)
        if result.code == 0:
            return True
        if _LOCK_CONTENTION.search(result.stderr) and "but expected" not in result.stderr:
            return self.run(*args, ok_codes=(0,)).code == 0
        if "but expected" in result.stderr or "already exists" in result.stderr:
            return False
        raise GitError(args, self.cwd, result.code, result.stdout, result.stderr)

    def snapshot_worktree(self, base_env: Mapping[str, str], message: str) -> str | None:
        """A commit of everything in this worktree (tracked, untracked, deleted) on top
        of HEAD, made with a private index so the worktree itself is not changed.
        None when there is nothing uncommitted.

        The private index starts as a copy of the worktree's own: its file stat data
        lets ``add -A`` hash only the files that changed, where an index made by
        ``read-tree`` has none and re-hashes every file (seconds on a large tree)."""
        git_dir = Path(self.out("rev-parse", "--absolute-git-dir"))
        index = git_dir / f"orchestrate-snapshot-{os.getpid()}.index"
        env = dict(base_env)
        env["GIT_INDEX_FILE"] = str(index)
        try:
            head = self.rev_parse("HEAD")
            try:
                shutil.copyfile(git_dir / "index", index)
            except FileNotFoundError:
                if head is not None:
                    self.run("read-tree", head, env=env)
            self.run("add", "-A", "--", ".", env=env)
            tree = self.out("write-tree", env=env)
            if head is not None and tree == self.out("rev-parse", f"{head}^{{tree}}"):
                return None
            parents = ["-p", head] if head is not None else []
            return self.out("commit-tree", tree, *parents, "-m", message, env=env)
        finally:
            index.unlink(missing_ok=True)


_EXCLUDES_LOCK = threading.Lock()  # slot workers may add patterns at the same time


def add_excludes(git: Git, patterns: list[str]) -> None:
    """Add ignore patterns to the repository's info/exclude (shared by its worktrees),
    so orchestrate's files stay out of ``git status`` without a tracked change."""
    with _EXCLUDES_LOCK:
        _add_excludes(git, patterns)


def _add_excludes(git: Git, patterns: list[str]) -> None:
    exclude = Path(git.out("rev-parse", "--git-common-dir")) / "info" / "exclude"
    if not exclude.is_absolute():
        exclude = git.cwd / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    current = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    missing = [p for p in patterns if p not in current.splitlines()]
    if not missing:
        return
    text = current + ("\n" if current and not current.endswith("\n") else "")
    text += "# orchestrate\n" + "\n".join(missing) + "\n"
    tmp = exclude.with_name(f".exclude.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, exclude)
