"""The pool of slot worktrees against real git, beside a user's own git commands."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.git import Git
from orchestrator.worktrees import LOCK_REASON, WorktreePool
from tests.helpers import git, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo", {"README.md": "# Project\n", "a/x.txt": "x\n", "b/y.txt": "y\n"}
    )


@pytest.fixture
def pool(repo: Path) -> Iterator[WorktreePool]:
    pool = WorktreePool(Git(repo), repo)
    yield pool
    pool.remove_all()


def head_of(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def files_of(path: Path) -> list[str]:
    return sorted(
        str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and ".git" not in f.parts
    )


def beside_the_user(repo: Path, commands: list[tuple[str, ...]]) -> Callable[[], list[str]]:
    """Run the user's git ``commands`` in turn, in a loop, until the returned call
    stops them; it returns the stderr of every one that failed."""
    halt = threading.Event()
    runs: list[subprocess.CompletedProcess[str]] = []

    def user() -> None:
        while not halt.is_set():
            command = commands[len(runs) % len(commands)]
            runs.append(subprocess.run(("git", *command), cwd=repo, capture_output=True, text=True))

    thread = threading.Thread(target=user)
    thread.start()

    def stop() -> list[str]:
        halt.set()
        thread.join(timeout=60)
        assert len(runs) >= 2 * len(commands), "the user's loop hardly ran"
        return [r.stderr for r in runs if r.returncode != 0]

    return stop


def test_slots_prepared_at_once_each_get_their_worktree(repo: Path, pool: WorktreePool) -> None:
    """Slot workers create their worktrees at the same moment on a first start: one
    thread's 'git worktree prune' must not remove .git/worktrees under another's
    creation (it once failed a task with 'could not create directory')."""
    base = head_of(repo)
    slots = [f"slot-{n}" for n in range(4)]
    with ThreadPoolExecutor(len(slots)) as workers:
        for round_ in range(8):
            pool.remove_all()
            jobs = [workers.submit(pool.prepare, s, f"r{round_}-{s}", base) for s in slots]
            paths = [job.result() for job in jobs]  # raises the GitError of a lost race
            assert all((p / ".git").is_file() for p in paths)


def test_a_users_gc_beside_worktree_creation_never_fails(repo: Path, pool: WorktreePool) -> None:
    """'git worktree add' shows a null HEAD for a moment, and removing a worktree pulls
    its reflog from under gc's 'reflog expire': either failed the user's 'git gc'
    ("bad object worktrees/<name>/HEAD") about one creation in thirteen, and a user's
    'git worktree prune' broke 'worktree add' itself. Slots are created and repaired
    (working tree deleted half the time) while the user runs gc and 'git worktree
    prune' in a loop: none of the user's commands fails, and neither does a slot."""
    base = head_of(repo)
    stop = beside_the_user(repo, [("worktree", "prune"), ("gc", "--quiet")])
    try:
        rng = random.Random(7)
        for n in range(60):
            slot = f"slot-{n % 3}"
            if rng.random() < 0.5:
                shutil.rmtree(pool.path(slot), ignore_errors=True)
            path = pool.prepare(slot, f"gc-{n}", base)
            assert files_of(path) == ["README.md", "a/x.txt", "b/y.txt"]
            assert git(path, "status", "--porcelain") == ""
    finally:
        failed = stop()
    assert not failed, failed[:3]
    listed = git(repo, "worktree", "list", "--porcelain")
    assert all(str(pool.path(f"slot-{n}")) in listed for n in range(3))


def test_a_users_prune_of_every_registration_never_fails_a_slot(
    repo: Path, pool: WorktreePool
) -> None:
    """A user's 'git worktree prune' removes .git/worktrees itself once it is empty,
    which can land just before a slot's registration is renamed into it: the slot
    makes the folder again and retries, and leaves no staged registration behind."""
    base = head_of(repo)
    stop = beside_the_user(repo, [("worktree", "prune")])
    try:
        for n in range(80):
            path = pool.prepare("slot-0", f"p-{n}", base)
            assert files_of(path) == ["README.md", "a/x.txt", "b/y.txt"]
            shutil.rmtree(path)  # unregistered to git: the user's prune takes it
    finally:
        failed = stop()
    assert not failed, failed[:3]
    assert list((repo / ".git").glob(".orchestrate-worktree-*")) == []


def test_a_slot_worktree_never_takes_a_users_worktree_name(
    repo: Path, pool: WorktreePool, tmp_path: Path
) -> None:
    """A user's own worktree that shares a slot's name keeps its registration; the slot
    gets the next free name, as 'git worktree add' would pick it."""
    mine = tmp_path / "elsewhere" / "slot-0"
    git(repo, "worktree", "add", "-q", "--detach", str(mine))
    path = pool.prepare("slot-0", "named", head_of(repo))
    assert (path / ".git").read_text().strip().endswith("/worktrees/slot-01")
    assert git(mine, "rev-parse", "--show-toplevel").strip() == str(mine.resolve())
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "agent/named"
    git(repo, "worktree", "prune")
    assert str(mine.resolve()) in git(repo, "worktree", "list")
    git(repo, "worktree", "remove", "--force", str(mine))


def test_a_slot_whose_link_names_a_users_worktree_leaves_it_alone(
    repo: Path, pool: WorktreePool, tmp_path: Path
) -> None:
    """A slot's .git that names a registration belonging to another worktree (left by a
    crash before the slot's own was made, or written by an agent) is not healthy: the
    user's worktree keeps its branch and files, and the slot gets its own."""
    git(repo, "branch", "my-feature")
    mine = tmp_path / "elsewhere" / "slot-0"
    git(repo, "worktree", "add", "-q", str(mine), "my-feature")
    (mine / "draft.txt").write_text("the user's work\n")
    slot = pool.path("slot-0")
    slot.mkdir(parents=True)
    (slot / ".git").write_text(f"gitdir: {repo / '.git' / 'worktrees' / 'slot-0'}\n")
    path = pool.prepare("slot-0", "mine-not", head_of(repo))
    assert git(mine, "symbolic-ref", "HEAD").strip() == "refs/heads/my-feature"
    assert (mine / "draft.txt").read_text() == "the user's work\n"
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "agent/mine-not"
    git(repo, "worktree", "remove", "--force", str(mine))


def test_a_git_link_replaced_by_a_symlink_is_repaired(repo: Path, pool: WorktreePool) -> None:
    """An agent that turns its .git into a symlink to the main repository's .git must
    not make the slot register the user's checkout a second time."""
    base = head_of(repo)
    path = pool.prepare("slot-0", "first", base)
    (path / ".git").unlink()
    (path / ".git").symlink_to(repo / ".git")
    path = pool.prepare("slot-0", "second", base)
    assert (path / ".git").is_file() and not (path / ".git").is_symlink()
    listed = git(repo, "worktree", "list", "--porcelain").split("\n\n")
    assert sum(block.startswith(f"worktree {repo}\n") for block in listed) == 1
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"


@pytest.mark.parametrize("kind", ["cone", "patterns"])
def test_a_slot_inherits_the_users_sparse_checkout(
    repo: Path, pool: WorktreePool, kind: str
) -> None:
    """As 'git worktree add' does: a sparse checkout of the user's is the slot's too,
    whether set with 'git sparse-checkout' (per-worktree config) or by hand."""
    if kind == "cone":
        git(repo, "sparse-checkout", "set", "a")
        expected = ["README.md", "a/x.txt"]
    else:
        git(repo, "config", "core.sparseCheckout", "true")
        (repo / ".git" / "info" / "sparse-checkout").write_text("/a/\n")
        git(repo, "read-tree", "-mu", "HEAD")
        expected = ["a/x.txt"]
    path = pool.prepare("slot-0", "sparse", head_of(repo))
    assert files_of(path) == expected
    assert git(path, "sparse-checkout", "list").split() == (["a"] if kind == "cone" else ["/a/"])


def test_a_slots_registration_has_the_modes_git_gives_one(repo: Path, pool: WorktreePool) -> None:
    """Made with the process umask like git's own, not private to the owner, so another
    member of a shared repository sees the slot and its prune keeps it."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = pool.prepare("slot-0", "modes", head_of(repo))
    admin = repo / ".git" / "worktrees" / "slot-0"
    assert stat.S_IMODE(admin.stat().st_mode) == 0o777 & ~umask
    for file in (admin / "HEAD", admin / "gitdir", path / ".git"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file


KILLED_AT = """
import os, signal, sys
from pathlib import Path
import orchestrator.worktrees as worktrees
from orchestrator.git import Git
real = worktrees.{where}
def kill_here(*args, **kwargs):
    if {when}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
worktrees.{where} = kill_here
root = Path(sys.argv[1])
worktrees.WorktreePool(Git(root), root).prepare("slot-0", "killed", sys.argv[2])
"""


@pytest.mark.parametrize(
    ("where", "when"),
    [
        ("os.rename", "True"),  # the registration staged, not yet in .git/worktrees
        ("atomic_write", "args[0].name == '.git'"),  # registered, no link yet
        ("atomic_write", "args[0].name == 'HEAD'"),  # rebuilding a broken one
    ],
)
def test_a_kill_inside_a_slots_creation_leaves_nothing_behind(
    repo: Path, pool: WorktreePool, where: str, when: str
) -> None:
    """SIGKILL at each step of building a slot: the next prepare recovers it, and the
    next daemon start removes the staged registration and lifts our 'locked' mark."""
    base = head_of(repo)
    if "HEAD" in when:  # a slot broken in place: rebuilt under its registration
        pool.prepare("slot-0", "before", base)
        (repo / ".git" / "worktrees" / "slot-0" / "HEAD").write_text("garbage\n")
    child = subprocess.run(
        (sys.executable, "-c", KILLED_AT.format(where=where, when=when), str(repo), base),
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -9, child.stderr
    path = pool.prepare("slot-0", "after", base)
    assert files_of(path) == ["README.md", "a/x.txt", "b/y.txt"]
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "agent/after"
    git(repo, "gc", "--quiet")
    pool.prune({"slot-0"})
    assert list((repo / ".git").glob(".orchestrate-worktree-*")) == []
    locks = list((repo / ".git" / "worktrees").glob("*/locked"))
    assert [p for p in locks if p.read_text() == LOCK_REASON] == []
    assert list((repo / ".git" / "worktrees").iterdir()) == [repo / ".git" / "worktrees" / "slot-0"]


def test_a_users_lock_on_a_slot_outlives_its_repair(repo: Path, pool: WorktreePool) -> None:
    base = head_of(repo)
    path = pool.prepare("slot-0", "locked", base)
    git(repo, "worktree", "lock", "--reason", "mine", str(path))
    shutil.rmtree(path)
    pool.prepare("slot-0", "repaired", base)
    pool.prune({"slot-0"})
    assert (repo / ".git" / "worktrees" / "slot-0" / "locked").read_text().strip() == "mine"
    git(repo, "worktree", "unlock", str(path))


def test_a_start_clears_only_its_own_pools_leftovers(
    repo: Path, pool: WorktreePool, tmp_path: Path
) -> None:
    """Two checkouts of one repository, each with a daemon of its own, share
    .git/worktrees: one's start must not clear what the other is building."""
    other_root = tmp_path / "other"
    git(repo, "worktree", "add", "-q", "--detach", str(other_root))
    other = WorktreePool(Git(other_root), other_root)
    path = pool.prepare("slot-0", "mine", head_of(repo))
    building = repo / ".git" / "worktrees" / "slot-0" / "locked"
    building.write_text(LOCK_REASON)
    staged = repo / ".git" / f"{pool._stage_prefix()}slot-1"
    staged.mkdir()
    other.prune(set())
    assert building.read_text() == LOCK_REASON and staged.is_dir()
    assert (path / ".git").is_file()
    pool.prune({"slot-0"})
    assert not building.exists() and not staged.exists()
    git(repo, "worktree", "remove", "--force", str(other_root))


def test_a_duplicate_registration_cannot_take_the_slots_place(
    repo: Path, pool: WorktreePool
) -> None:
    """Two registrations naming one path: git's prune keeps the first by name and
    drops the other. The one the slot does not use is retired, so a prune never
    drops the slot's own."""
    base = head_of(repo)
    path = pool.prepare("slot-0", "first", base)
    worktrees = repo / ".git" / "worktrees"
    shutil.copytree(worktrees / "slot-0", worktrees / "slot-00")
    (path / ".git").write_text(f"gitdir: {worktrees / 'slot-00'}\n")
    (worktrees / "slot-00" / "HEAD").write_text("garbage\n")  # broken: rebuilt in place
    path = pool.prepare("slot-0", "second", base)
    git(repo, "worktree", "prune")
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "agent/second"
    assert os.listdir(worktrees) == ["slot-00"]


def test_a_rebase_or_bisect_left_by_an_agent_does_not_reach_the_next_task(
    repo: Path, pool: WorktreePool
) -> None:
    """A half-done rebase or bisect lives in the worktree's git dir, and a forced
    checkout keeps it: the next agent would inherit it, and the old branch would
    count as checked out in the slot."""
    base = head_of(repo)
    path = pool.prepare("slot-0", "t1", base)
    for n in range(2):
        (path / f"f{n}").write_text(f"{n}\n")
        git(path, "add", "-A")
        git(path, "commit", "-qm", f"c{n}")
    env = {**os.environ, "GIT_SEQUENCE_EDITOR": "sed -i 's/^pick/edit/'"}
    subprocess.run(("git", "rebase", "-i", base), cwd=path, env=env, capture_output=True)
    git(path, "bisect", "start")
    assert "rebase" in git(path, "status")
    path = pool.prepare("slot-0", "t2", base)
    status = git(path, "status")
    assert "rebase" not in status and "bisect" not in status, status
    git(repo, "branch", "-D", "agent/t1")  # no longer checked out anywhere
    git(path, "rebase", base)  # the next agent's own rebase starts


def test_a_prune_never_takes_the_registration_a_slot_is_rebuilt_under(
    repo: Path, pool: WorktreePool
) -> None:
    """A registration whose working tree was deleted is one a user's prune may have
    chosen already: the slot retires it (no branch left checked out there) and
    registers anew, and the prune that then runs leaves the slot working."""
    base = head_of(repo)
    path = pool.prepare("slot-0", "t1", base)
    shutil.rmtree(path)
    path = pool.prepare("slot-0", "t2", base)
    git(repo, "branch", "-D", "agent/t1")
    git(repo, "worktree", "prune")
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "agent/t2"
    assert os.listdir(repo / ".git" / "worktrees") == [_gitname(path)]


def _gitname(path: Path) -> str:
    return Path((path / ".git").read_text().split(":", 1)[1].strip()).name
