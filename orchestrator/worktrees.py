"""The pool of agent worktrees: one per agent slot, reused from task to task.

A new task costs a forced checkout of a fresh branch and a clean, not a new
worktree. A worktree an agent broke (deleted, HEAD moved elsewhere) is repaired
or recreated before its next task.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path

from orchestrator.context import atomic_write
from orchestrator.git import Git, GitError, add_excludes

WORKTREES_DIR = Path(".orchestrate") / "worktrees"


def branch_name(task_id: str) -> str:
    return f"agent/{task_id}"


def start_mark(branch: str) -> str:
    """The reflog message of the checkout that starts a run on ``branch``: what the
    worktree's HEAD did after it (newer entries) is the agent's doing."""
    return f"orchestrate: start {branch}"


class WorktreePool:
    def __init__(self, git: Git, root: Path, copy_ignored: tuple[str, ...] = ()) -> None:
        self.git = git
        self.root = Path(root)
        self.base = self.root / WORKTREES_DIR
        self.copy_ignored = copy_ignored
        self._excluded = False
        # slots are prepared on worker threads at once; creating, repairing and pruning
        # worktrees go one at a time ('git worktree prune' removes an empty
        # .git/worktrees while another thread's 'worktree add' is creating its entry)
        self._admin = threading.Lock()
        self._common: Path | None = None

    def path(self, slot: str) -> Path:
        return self.base / slot

    def prune(self, keep: set[str]) -> list[str]:
        """Remove worktrees under .orchestrate/worktrees that belong to no slot."""
        with self._admin:
            return self._prune(keep)

    def _prune(self, keep: set[str]) -> list[str]:
        self.git.run("worktree", "prune")
        removed: list[str] = []
        if not self.base.is_dir():
            return removed
        for entry in sorted(self.base.iterdir()):
            if entry.name in keep:
                continue
            self._remove(entry)
            removed.append(entry.name)
        self.git.run("worktree", "prune")
        return removed

    def _remove(self, path: Path) -> None:
        self.git.run("worktree", "remove", "--force", "--force", str(path), check=False)
        if path.exists() or path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)

    def _healthy(self, path: Path) -> bool:
        if not (path / ".git").is_file():
            return False
        result = self.git.at(path).run("rev-parse", "--show-toplevel", check=False)
        return result.code == 0 and Path(result.stdout.strip()).resolve() == path.resolve()

    def prepare(self, slot: str, task_id: str, base_commit: str) -> Path:
        """Give ``slot`` a clean worktree on a fresh ``agent/<task_id>`` at ``base_commit``."""
        path = self.path(slot)
        branch = branch_name(task_id)
        if not self._healthy(path):
            self._recreate(path, base_commit)
        wt = self.git.at(path)
        mark = {"GIT_REFLOG_ACTION": start_mark(branch)}
        checkout = ("checkout", "--force", "--no-recurse-submodules", "-B", branch, base_commit)
        try:
            wt.run(*checkout, env=mark)
        except GitError:
            # an agent may have left a lock or a corrupt index behind: start this slot anew
            self._recreate(path, base_commit)
            wt.run(*checkout, env=mark)
        wt.run("clean", "-ffdx", "--quiet")
        self._copy_ignored(path)
        return path

    def _recreate(self, path: Path, base_commit: str) -> None:
        """Build the slot's working tree anew and register it with git in one step.

        'git worktree add' registers the new worktree with a null HEAD for the moment
        before it sets the real one, and a 'git gc' the user runs in that moment fails
        ("bad object worktrees/<name>/HEAD"). So the worktree's administrative
        directory (gitrepository-layout(5): gitdir, commondir, HEAD) is written whole
        beside .git/worktrees and renamed into it, HEAD already naming the commit. The
        one the slot had (its agent deleted or broke only the working tree) is reused,
        not removed: removing it under a running gc fails the gc's reflog expiry. The
        next checkout writes the index and the files."""
        commit = self.git.rev_parse(base_commit)
        if commit is None:
            raise GitError(("rev-parse", base_commit), self.root, 128, "", "not a commit")
        with self._admin:
            worktrees = self._common_dir() / "worktrees"
            _empty_but_link(path)
            link = os.path.realpath(path / ".git")
            admin = self._admin_dir(worktrees, link)
            # the link first: git prunes a worktree whose .git is missing and index is gone
            atomic_write(path / ".git", f"gitdir: {admin}\n")
            files = {"gitdir": f"{link}\n", "commondir": "../..\n", "HEAD": f"{commit}\n"}
            if admin.is_dir():
                for stale in ("index", "index.lock", "HEAD.lock"):
                    (admin / stale).unlink(missing_ok=True)
                for name, text in files.items():
                    atomic_write(admin / name, text)
                return
            worktrees.mkdir(exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".orchestrate-worktree-", dir=worktrees.parent))
            for name, text in files.items():
                (stage / name).write_text(text, encoding="utf-8")
            os.rename(stage, admin)

    def _common_dir(self) -> Path:
        if self._common is None:
            common = Path(self.git.out("rev-parse", "--git-common-dir"))
            self._common = Path(os.path.realpath(self.git.cwd / common))
        return self._common

    @staticmethod
    def _admin_dir(worktrees: Path, link: str) -> Path:
        """The administrative directory whose gitdir names ``link`` (the worktree's .git
        file), else the first free name from the worktree's own, as git picks it."""
        name = Path(link).parent.name
        taken: set[str] = set()
        if worktrees.is_dir():
            for entry in worktrees.iterdir():
                taken.add(entry.name)
                try:
                    gitdir = (entry / "gitdir").read_text(encoding="utf-8").strip()
                except OSError:
                    continue
                if gitdir and os.path.realpath(gitdir) == link:
                    return entry
        candidates = (name if n == 0 else f"{name}{n}" for n in itertools.count())
        return worktrees / next(c for c in candidates if c not in taken)

    def _copy_ignored(self, path: Path) -> None:
        """Bring the user's ignored files the agent needs (.env, node_modules) along:
        files are copied, directories linked, so nothing in the user's tree changes.

        A link is not a directory to git, so a ``node_modules/`` ignore rule would
        not cover it; the items are added to the repository's info/exclude (they are
        ignored files of the user's already) so no agent commits them."""
        if self.copy_ignored and not self._excluded:
            add_excludes(self.git, [f"/{item}" for item in self.copy_ignored])
            self._excluded = True
        for item in self.copy_ignored:
            src = self.root / item
            dest = path / item
            if not src.exists() or os.path.lexists(dest):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                dest.symlink_to(src.resolve(), target_is_directory=True)
            else:
                shutil.copy2(src, dest)

    def detach(self, slot: str, *, head: str | None = None) -> None:
        """Leave the slot's worktree on no branch, so its branch can be deleted or merged.

        Only HEAD moves, to the commit it names (``head`` when the caller has just read
        it): a checkout would read every file of the tree, and the next ``prepare``
        resets the files anyway."""
        path = self.path(slot)
        if head is None:
            if not self._healthy(path):
                return
            head = self.git.at(path).rev_parse("HEAD")
            if head is None:
                return
        elif not (path / ".git").is_file():
            return
        self.git.at(path).run(
            "update-ref", "--no-deref", "-m", "orchestrate: detach", "HEAD", head, check=False
        )

    def remove_all(self) -> None:
        with self._admin:
            if self.base.is_dir():
                for entry in sorted(self.base.iterdir()):
                    self._remove(entry)
            self.git.run("worktree", "prune")


def _empty_but_link(path: Path) -> None:
    """Leave ``path`` an empty directory but for its .git file, which stays put so
    the worktree is never briefly unregistered to a 'git worktree prune'."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_symlink() or entry.is_file():
            if entry.name != ".git":
                entry.unlink()
        else:
            shutil.rmtree(entry)
