"""The pool of agent worktrees: one per agent slot, reused from task to task.

A new task costs a forced checkout of a fresh branch and a clean, not a new
worktree. A worktree an agent broke (deleted, HEAD moved elsewhere) is repaired
or recreated before its next task.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from orchestrator.context import atomic_write
from orchestrator.git import Git, GitError, add_excludes
from protocol.errors import OrchestrateError

WORKTREES_DIR = Path(".orchestrate") / "worktrees"
# the 'locked' file holds a registration against 'git worktree prune' while it is built
LOCK_REASON = "orchestrate: preparing this worktree"
RENAME_TRIES = 20
# what a run leaves in its worktree's git dir besides HEAD: an operation half done
# (rebase, merge, bisect...) and the index; the next run starts without any of it
GIT_STATE = (
    "index", "index.lock", "HEAD.lock", "ORIG_HEAD", "rebase-merge", "rebase-apply",
    "sequencer", "MERGE_HEAD", "MERGE_MSG", "MERGE_MODE", "MERGE_RR", "AUTO_MERGE",
    "CHERRY_PICK_HEAD", "REVERT_HEAD", "SQUASH_MSG", "BISECT_LOG", "BISECT_START",
    "BISECT_TERMS", "BISECT_NAMES", "BISECT_EXPECTED_REV", "BISECT_ANCESTORS_OK",
    "BISECT_RUN", "refs/bisect",
)  # fmt: skip


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
        # .git/worktrees while another thread is registering a worktree in it)
        self._admin = threading.Lock()
        self._common: Path | None = None

    def path(self, slot: str) -> Path:
        return self.base / slot

    def prune(self, keep: set[str]) -> list[str]:
        """Remove worktrees under .orchestrate/worktrees that belong to no slot."""
        with self._admin:
            return self._prune(keep)

    def _prune(self, keep: set[str]) -> list[str]:
        self._lift_stale_locks()
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

    def _lift_stale_locks(self) -> None:
        """Undo what a crash in the middle of ``_recreate`` left: staged registrations
        and our 'locked' marks (a user's own 'git worktree lock' stays). Only this
        pool's: another checkout of the repository may run a daemon of its own."""
        common = self._common_dir()
        for stage in common.glob(f"{self._stage_prefix()}*"):
            _remove_path(stage)
        mine = os.path.realpath(self.base) + os.sep
        for lock in common.glob("worktrees/*/locked"):
            if str(_gitfile(lock.parent / "gitdir")).startswith(mine):
                _unlock(lock)

    def _stage_prefix(self) -> str:
        """Where this pool stages a registration: named after the pool's own folder."""
        return f".orchestrate-worktree-{zlib.crc32(os.fsencode(os.path.realpath(self.base))):08x}-"

    def _remove(self, path: Path) -> None:
        self.git.run("worktree", "remove", "--force", "--force", str(path), check=False)
        if path.exists() or path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)

    def _healthy(self, path: Path) -> bool:
        """The slot's .git link and its registration name each other, and git agrees
        the worktree is ``path`` (a link alone could name another worktree's entry)."""
        link = path / ".git"
        admin = _gitfile(link)
        if (
            link.is_symlink()
            or admin is None
            or _gitfile(admin / "gitdir") != Path(os.path.realpath(path), ".git")
        ):
            return False
        result = self.git.at(path).run("rev-parse", "--show-toplevel", check=False)
        return result.code == 0 and Path(result.stdout.strip()).resolve() == path.resolve()

    def prepare(self, slot: str, task_id: str, base_commit: str) -> Path:
        """Give ``slot`` a clean worktree on a fresh ``agent/<task_id>`` at ``base_commit``."""
        path = self.path(slot)
        branch = branch_name(task_id)
        if not self._healthy(path):
            self._recreate(path, base_commit)
        else:
            _clear_git_state(_gitfile(path / ".git"), index=False)
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
        """Build the slot's working tree anew, registered with git all along.

        'git worktree add' registers the new worktree with a null HEAD for the moment
        before it sets the real one, and a 'git gc' the user runs in that moment fails
        ("bad object worktrees/<name>/HEAD"). So the administrative directory
        (gitrepository-layout(5): gitdir, commondir, HEAD) is written whole beside
        .git/worktrees and renamed into it, HEAD already naming the commit, 'locked'
        against 'git worktree prune' until the worktree's .git link exists. The one
        the slot had is rebuilt in place when no prune can be removing it (see
        ``_registration``), else retired; never removed, since removing it under a
        running gc fails the gc's reflog expiry. The next checkout writes the index
        and the files."""
        commit = self.git.rev_parse(base_commit)
        if commit is None:
            raise GitError(("rev-parse", base_commit), self.root, 128, "", "not a commit")
        with self._admin:
            worktrees = self._common_dir() / "worktrees"
            _empty_but_link(path)
            link = os.path.join(os.path.realpath(path), ".git")
            files = {"gitdir": f"{link}\n", "commondir": "../..\n", "HEAD": f"{commit}\n"}
            admin = self._adopt(_registration(worktrees, path / ".git", link, commit), files)
            if admin is None:
                admin = self._register(worktrees, path.name, files)
            atomic_write(path / ".git", f"gitdir: {admin}\n")
            _unlock(admin / "locked")

    def _adopt(self, admin: Path | None, files: dict[str, str]) -> Path | None:
        """Rebuild the slot's registration in place, 'locked' while it is; None when it
        is gone (the slot is then registered anew). Its files are replaced by renames
        from outside it, so a folder deleted meanwhile is never made again half-built."""
        if admin is None:
            return None
        lock = admin / "locked"
        try:
            if not lock.exists():
                self._replace_in(admin, "locked", LOCK_REASON)
            _clear_git_state(admin, index=True)
            for name, text in files.items():
                self._replace_in(admin, name, text)
        except FileNotFoundError:
            return None
        return admin

    def _replace_in(self, folder: Path, name: str, text: str) -> None:
        """Make ``folder/name`` hold ``text`` by a rename from outside ``folder``, so a
        folder deleted meanwhile raises FileNotFoundError, not made again."""
        atomic_write(
            folder / name, text, stage=(self._common_dir(), f"{self._stage_prefix()}file-")
        )

    def _register(self, worktrees: Path, name: str, files: dict[str, str]) -> Path:
        """Stage a complete, locked administrative directory and rename it into
        .git/worktrees under the first free name (``name``, ``name1``... as git picks)."""
        stage = worktrees.parent / f"{self._stage_prefix()}{name}"
        shutil.rmtree(stage, ignore_errors=True)  # left by a crash
        stage.mkdir()
        try:
            for file, text in {**files, "locked": LOCK_REASON}.items():
                (stage / file).write_text(text, encoding="utf-8")
            self._inherit(stage)
            for _ in range(RENAME_TRIES):
                try:
                    worktrees.mkdir(exist_ok=True)
                    free = next(n for n in _names(name) if not os.path.lexists(worktrees / n))
                    os.rename(stage, worktrees / free)
                    return worktrees / free
                except FileNotFoundError:
                    continue  # a user's 'git worktree prune' removed an empty .git/worktrees
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    continue  # the name was taken in the meantime
            raise OrchestrateError(
                f"could not register the worktree {name} in {worktrees}: it changed under "
                f"every one of {RENAME_TRIES} tries; is another program adding worktrees?"
            )
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _inherit(self, stage: Path) -> None:
        """What 'git worktree add' copies from the main worktree: its sparse-checkout
        patterns, and its config.worktree without core.bare and core.worktree."""
        if self._config_true("core.sparseCheckout"):
            patterns = self._main_path("info/sparse-checkout")
            if patterns.is_file():
                (stage / "info").mkdir()
                shutil.copyfile(patterns, stage / "info" / "sparse-checkout")
        if self._config_true("extensions.worktreeConfig"):
            config = self._main_path("config.worktree")
            if config.is_file():
                shutil.copyfile(config, stage / "config.worktree")
                copy = ("config", "--file", str(stage / "config.worktree"), "--unset-all")
                if self._config_true("core.bare", file=stage / "config.worktree"):
                    self.git.run(*copy, "core.bare")
                self.git.run(*copy, "core.worktree", ok_codes=(0, 5))  # 5: was not set

    def _config_true(self, key: str, *, file: Path | None = None) -> bool:
        where = ("--file", str(file)) if file is not None else ()
        result = self.git.run("config", *where, "--type", "bool", "--get", key, check=False)
        return result.code == 0 and result.stdout.strip() == "true"

    def _main_path(self, name: str) -> Path:
        return self.git.cwd / self.git.out("rev-parse", "--git-path", name)

    def _common_dir(self) -> Path:
        if self._common is None:
            common = Path(self.git.out("rev-parse", "--git-common-dir"))
            self._common = Path(os.path.realpath(self.git.cwd / common))
        return self._common

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
            if entry.name != ".git" or entry.is_symlink():
                entry.unlink()
        else:
            shutil.rmtree(entry)


def _names(name: str) -> Iterator[str]:
    """A registration's names in the order git tries them: name, name1, name2..."""
    yield name
    for n in itertools.count(1):
        yield f"{name}{n}"


def _gitfile(file: Path) -> Path | None:
    """The path a .git link or a registration's gitdir file names (relative to the
    file's folder when git wrote it relative), or None when it names none."""
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    text = text.removeprefix("gitdir:").strip()
    return Path(os.path.realpath(file.parent / text)) if text else None


def _registration(worktrees: Path, link_file: Path, link: str, commit: str) -> Path | None:
    """The registration to rebuild the slot under: of those whose gitdir names
    ``link``, the one the slot's .git still names, else a 'locked' one (by a kill of
    ours, or the user). No 'git worktree prune' can be removing either. Every other
    one of the slot's (its working tree was deleted, so a prune may have chosen it
    already) is retired, and the slot is registered anew."""
    named = _gitfile(link_file)
    try:
        entries = [e for e in sorted(worktrees.iterdir()) if str(_gitfile(e / "gitdir")) == link]
    except OSError:
        return None
    safe = [e for e in entries if e == named or (e / "locked").exists()]
    best = min(safe, key=lambda e: e != named) if safe else None
    for entry in entries:
        if entry != best:
            _retire(entry, link, commit)
    return best


def _retire(admin: Path, link: str, commit: str) -> None:
    """Leave a registration the slot does not use to git's prune: its gitdir names a
    path that never exists (else prune, keeping the first by name of two
    registrations of one path, could drop the slot's own) and its HEAD ``commit``, not
    a branch (a branch checked out there could not be deleted). Each file is replaced in place
    or not at all, never created: a prune may be deleting the folder now."""
    _replace_existing(admin / "gitdir", f"{link}.retired\n")
    head = admin / "HEAD"
    with contextlib.suppress(OSError):
        text = head.read_text(encoding="utf-8").strip()
        if text.startswith("ref:"):
            _replace_existing(head, f"{commit}\n")


def _replace_existing(file: Path, text: str) -> None:
    """Overwrite ``file`` if it exists, creating nothing."""
    try:
        fd = os.open(file, os.O_WRONLY | os.O_TRUNC)
    except OSError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _unlock(lock: Path) -> None:
    """Lift our 'locked' mark; a user's own 'git worktree lock' stays."""
    with contextlib.suppress(OSError):
        if lock.read_text(encoding="utf-8") == LOCK_REASON:
            lock.unlink()


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clear_git_state(admin: Path | None, *, index: bool) -> None:
    """Forget what the last run left in its worktree's git dir (``GIT_STATE``), the
    index too when ``index``; the next checkout starts from HEAD alone."""
    if admin is None:
        return
    for name in GIT_STATE:
        if index or name != "index":
            _remove_path(admin / name)
