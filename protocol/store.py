"""Every state transition of a task, as atomic renames under one lock.

The directory a task file is in is its state. Writers stage bytes in
``tasks/.tmp`` (written, flushed, fsynced), then publish with a link or rename
that never overwrites, like Maildir delivery. A transition first renames the
file into its new directory (one atomic step, so exactly one claimant can win)
and only then rewrites it in place through a temp file, so at every instant the
task is in exactly one state directory and its file is complete.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from protocol.errors import (
    IllegalTransitionError,
    LockTimeoutError,
    TaskClashError,
    TaskNotFoundError,
    TaskValidationError,
)
from protocol.task import (
    MAX_TASK_BYTES,
    Assignment,
    Attempt,
    Parsed,
    Result,
    Task,
    TaskId,
    id_from_filename,
    id_problem,
    is_ignored_name,
    new_task_id,
    parse_task_bytes,
    utc_iso,
    validate_id,
)

if TYPE_CHECKING:
    import filelock

State = Literal["pending", "assigned", "completed", "failed"]
STATES: tuple[State, ...] = ("pending", "assigned", "completed", "failed")
ERROR_SUFFIX = ".error"
STALE_TMP_SECONDS = 3600.0
# a file reported open for writing is trusted to be finished after this long untouched
WRITING_GRACE = 30.0

Mutation = Callable[[Task], None]


@dataclass
class IntakeReport:
    """What one look at ``tasks/pending`` found."""

    ready: list[Task] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, message)
    deferred: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Rejected:
    name: str
    path: Path
    message: str


class TaskStore:
    """The ``tasks/`` tree of one repository."""

    def __init__(self, root: Path, *, lock_timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.tasks_dir = self.root / "tasks"
        self.tmp_dir = self.tasks_dir / ".tmp"
        self.lock_path = self.tasks_dir / ".lock"
        self.lock_timeout = lock_timeout
        self._lock: filelock.FileLock | None = None
        # file name -> (inode, size, mtime_ns, parse result) so rescans do not re-parse
        self._intake_cache: dict[str, tuple[int, int, int, Parsed]] = {}
        # names accepted as ready with the (inode, size, mtime) they had then: a
        # rescan that finds one unchanged need not look for its id elsewhere again
        self._intake_accepted: dict[str, tuple[int, int, int]] = {}

    # ----- layout -------------------------------------------------------------------

    def dir(self, state: State) -> Path:
        return self.tasks_dir / state

    def ensure_layout(self) -> None:
        for state in STATES:
            self.dir(state).mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.lock_path.touch(exist_ok=True)

    def is_initialised(self) -> bool:
        return all(self.dir(state).is_dir() for state in STATES)

    @contextmanager
    def lock(self) -> Iterator[None]:
        import filelock  # only writers lock: counting and listing never load it

        if self._lock is None:
            self._lock = filelock.FileLock(str(self.lock_path), timeout=self.lock_timeout)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise LockTimeoutError(self.lock_path, self.lock_timeout) from None
        try:
            yield
        finally:
            self._lock.release()

    # ----- reading --------------------------------------------------------------------

    def counts(self, states: tuple[State, ...] = STATES) -> dict[State, int]:
        """Tasks per state, from directory entries only (no file is opened)."""
        result: dict[State, int] = {}
        for state in states:
            try:
                with os.scandir(self.dir(state)) as entries:
                    names = [e.name for e in entries if not is_ignored_name(e.name)]
            except FileNotFoundError:
                names = []
            if state == "failed":
                names = [n for n in names if not n.endswith(ERROR_SUFFIX)]
            result[state] = len(names)
        return result

    def ids(self, state: State) -> list[TaskId]:
        """Ids of the well-named task files in one state, sorted."""
        out: list[TaskId] = []
        try:
            with os.scandir(self.dir(state)) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            return out
        name_set = set(names)
        for name in names:
            if is_ignored_name(name) or not name.endswith(".yaml"):
                continue
            if name + ERROR_SUFFIX in name_set:  # a rejected input, not a task
                continue
            task_id = name[: -len(".yaml")]
            if id_problem(task_id) is None:  # any other name is not a task file
                out.append(TaskId(task_id))
        out.sort()
        return out

    def locate(self, task_id: str) -> tuple[State, Path] | None:
        """Where the task is. An id that is not valid raises TaskValidationError, so a
        name like '../x' from a command line never becomes a path."""
        validate_id(task_id)
        for state in STATES:
            path = self.dir(state) / f"{task_id}.yaml"
            if os.path.lexists(path):
                if state == "failed" and os.path.lexists(str(path) + ERROR_SUFFIX):
                    continue
                return state, path
        return None

    def _occupant(self, task_id: str, *, skip: State | None = None) -> Path | None:
        """Any file that holds the name ``<task_id>.yaml`` in a state directory.

        Unlike locate() this counts rejected inputs in tasks/failed too: a later
        fail of a task with that id would have to overwrite them.
        """
        for state in STATES:
            path = self.dir(state) / f"{task_id}.yaml"
            if state != skip and os.path.lexists(path):
                return path
        return None

    def _taken(self, name: str, task_id: str, occupant: Path) -> str:
        where = _display(self.root, occupant)
        if os.path.lexists(str(occupant) + ERROR_SUFFIX):
            return (
                f"tasks/pending/{name}: id '{task_id}' is already taken by {where}, an earlier "
                f"file that was rejected (delete {where} and {where}{ERROR_SUFFIX}, then submit "
                "this file again)"
            )
        return (
            f"tasks/pending/{name}: id '{task_id}' is already taken by {where} "
            "(give the task another id)"
        )

    def load(self, task_id: str) -> tuple[State, Task]:
        found = self.locate(task_id)
        if found is None:
            raise TaskNotFoundError(task_id)
        state, path = found
        return state, self.read(path).task

    def read(self, path: Path) -> Parsed:
        source = _display(self.root, path)
        data = _read_regular(path, source)
        return parse_task_bytes(data, source=source, default_id=id_from_filename(path.name))

    def iter_tasks(self, states: tuple[State, ...] = STATES) -> Iterator[tuple[State, Task]]:
        """Parse lazily, one file at a time; files that vanish mid-listing are skipped."""
        for state in states:
            for task_id in self.ids(state):
                path = self.dir(state) / f"{task_id}.yaml"
                try:
                    yield state, self.read(path).task
                except FileNotFoundError:
                    continue
                except TaskValidationError:
                    if state != "pending":
                        raise

    def rejected(self) -> list[Rejected]:
        out: list[Rejected] = []
        failed = self.dir("failed")
        try:
            names = sorted(os.listdir(failed))
        except FileNotFoundError:
            return out
        for name in names:
            if not name.endswith(ERROR_SUFFIX):
                continue
            try:
                message = (failed / name).read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            base = name[: -len(ERROR_SUFFIX)]
            out.append(Rejected(base, failed / base, message))
        return out

    # ----- writing --------------------------------------------------------------------

    def _stage(self, data: bytes) -> Path:
        """Write ``data`` to a fresh file in tasks/.tmp, flushed and fsynced."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{os.getpid()}.{time.time_ns()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def _publish(self, tmp: Path, dest: Path) -> bool:
        """Give the staged ``tmp`` the name ``dest`` unless that name exists; hold the lock."""
        try:
            os.link(tmp, dest)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # a file system without hard links: the lock and this check keep rename safe
            if os.path.lexists(dest):
                return False
            os.rename(tmp, dest)
        return True

    def submit(self, task: Task, *, now: float | None = None) -> Task:
        """Publish a new task into tasks/pending, never overwriting anything.

        The bytes are checked to parse as a valid task before anything is written,
        so a file this writes is never rejected by intake.
        """
        self.ensure_layout()
        now = time.time() if now is None else now
        generated = not task.id
        for _ in range(20):
            if generated:
                task.id = new_task_id(now)
            validate_id(task.id)
            task.submitted_at = task.submitted_at or utc_iso(now)
            dest = self.dir("pending") / f"{task.id}.yaml"
            data = task.dump()
            parse_task_bytes(data, source=_display(self.root, dest), default_id=task.id)
            tmp = self._stage(data)
            try:
                with self.lock():
                    occupant = self._occupant(task.id)
                    if occupant is None and not self._publish(tmp, dest):
                        occupant = dest
            finally:
                tmp.unlink(missing_ok=True)
            if occupant is not None:
                if generated:
                    continue
                raise TaskClashError(task.id, Path(_display(self.root, occupant)))
            _fsync_dir(self.dir("pending"))
            return task
        raise TaskClashError(task.id, self.dir("pending"))  # pragma: no cover - 20 clashes

    def intake(
        self,
        *,
        now: float | None = None,
        settle_seconds: float = 1.0,
        names: Iterable[str] | None = None,
        writing: Collection[str] = (),
    ) -> IntakeReport:
        """Validate the files in tasks/pending; move bad ones to tasks/failed.

        A valid file is ready at once. An invalid one, or one not named ``*.yaml``,
        whose mtime is within ``settle_seconds`` of ``now`` may still be being
        written, so it waits for the next look (an mtime far in the future does not
        defer it forever).
        With ``names``, only those files are looked at (the daemon passes the names
        its file-system events mentioned); otherwise the whole directory is.
        ``writing`` names files a writer still holds open (the daemon knows from
        inotify): they wait, valid or not, unless untouched for WRITING_GRACE seconds.
        """
        now = time.time() if now is None else now
        report = IntakeReport()
        pending = self.dir("pending")
        prefix = f"{pending}{os.sep}"  # str paths: a Path per file costs more than its lstat
        seen: set[str] = set()
        ids_here: dict[str, str] = {}
        if names is None:
            try:
                listing = sorted(os.listdir(pending))
            except FileNotFoundError:
                return report
        else:
            listing = sorted(set(names))
        for name in listing:
            if is_ignored_name(name):
                continue
            seen.add(name)
            try:
                st = os.lstat(prefix + name)
            except FileNotFoundError:
                continue
            if name in writing and now - st.st_mtime < WRITING_GRACE:
                report.deferred.append(name)
                continue
            if stat.S_ISLNK(st.st_mode):
                self._reject(
                    name,
                    f"tasks/pending/{name} is a symbolic link; links are never "
                    "followed (copy the task file itself into tasks/pending/)",
                    report,
                )
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = _kind(st.st_mode)
                self._reject(
                    name,
                    f"tasks/pending/{name} is a {kind}, not a regular file "
                    f"(put task files, not a {kind}, into tasks/pending/)",
                    report,
                )
                continue
            # a file changed within the settle window may still be being written
            settling = abs(now - st.st_mtime) < settle_seconds
            default_id = id_from_filename(name)
            if default_id is None and settling:
                report.deferred.append(name)
                continue
            if default_id is None:
                self._reject(
                    name,
                    f"tasks/pending/{name} does not end in .yaml or .yml "
                    "(rename it to <id>.yaml and submit it again)",
                    report,
                )
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._intake_cache.get(name)
            if cached is not None and cached[:3] == key:
                parsed = cached[3]
            else:
                try:
                    parsed = self.read(pending / name)
                except FileNotFoundError:
                    continue
                except TaskValidationError as exc:
                    if settling:
                        report.deferred.append(name)
                    else:
                        self._reject(name, str(exc), report)
                    continue
                if parsed.task.submitted_at is None:
                    parsed.task.submitted_at = utc_iso(st.st_mtime)
                self._intake_cache[name] = (st.st_ino, st.st_size, st.st_mtime_ns, parsed)
                report.warnings.extend(parsed.warnings)
            task = parsed.task
            if names is not None:
                owner = self._intake_owner(task.id, name)
                if owner is not None:
                    ids_here[task.id] = owner
            if task.id in ids_here:
                self._reject(
                    name,
                    f"tasks/pending/{name}: id '{task.id}' is already used by "
                    f"tasks/pending/{ids_here[task.id]} (give one of them another id)",
                    report,
                )
                continue
            canonical = f"{task.id}.yaml"
            if name != canonical:
                moved = self._adopt(name, canonical, task.id, report)
                if not moved:
                    continue
                seen.add(canonical)
            elif self._intake_accepted.get(name) != key:
                occupant = self._occupant(task.id, skip="pending")
                if occupant is not None:
                    self._reject(name, self._taken(name, task.id, occupant), report)
                    continue
                self._intake_accepted[name] = key
            ids_here[task.id] = canonical
            report.ready.append(task)
        if names is None:
            for cache in (self._intake_cache, self._intake_accepted):
                for name in [n for n in cache if n not in seen]:
                    del cache[name]
        return report

    def _intake_owner(self, task_id: str, name: str) -> str | None:
        """Another pending file already accepted with this id, if any."""
        canonical = f"{task_id}.yaml"
        if canonical != name and canonical in self._intake_cache:
            return canonical
        return None

    def _adopt(self, name: str, canonical: str, task_id: str, report: IntakeReport) -> bool:
        """Rename a valid pending file to ``<id>.yaml`` so its name is its id."""
        pending = self.dir("pending")
        with self.lock():
            occupant = self._occupant(task_id)
            if occupant is not None:
                self._reject(name, self._taken(name, task_id, occupant), report)
                return False
            try:
                os.rename(pending / name, pending / canonical)
            except FileNotFoundError:
                return False
        cached = self._intake_cache.pop(name, None)
        self._intake_accepted.pop(name, None)
        if cached is not None:
            self._intake_cache[canonical] = cached
        return True

    def _forget(self, name: str) -> None:
        """Drop what intake remembers of a pending file name."""
        self._intake_cache.pop(name, None)
        self._intake_accepted.pop(name, None)

    def _reject(self, name: str, message: str, report: IntakeReport) -> None:
        """Move a bad input byte for byte to tasks/failed, with ``<name>.error`` beside it."""
        src = self.dir("pending") / name
        failed = self.dir("failed")
        with self.lock():
            if not os.path.lexists(src):
                return
            dest_name = name
            n = 1
            while os.path.lexists(failed / dest_name) or os.path.lexists(
                failed / (dest_name + ERROR_SUFFIX)
            ):
                n += 1
                dest_name = f"{name}.{n}"
            text = (
                f"{message}\n\n"
                f"The file was moved unchanged to tasks/failed/{dest_name}.\n"
                f"Fix it, then submit it again:\n"
                f"  mv tasks/failed/{dest_name} tasks/pending/{name} && "
                f"rm tasks/failed/{dest_name}{ERROR_SUFFIX}\n"
            )
            tmp = self._stage(text.encode("utf-8"))
            os.replace(tmp, failed / (dest_name + ERROR_SUFFIX))
            os.rename(src, failed / dest_name)
        _fsync_dir(failed)
        self._forget(name)
        report.rejected.append((name, message))

    # ----- transitions ----------------------------------------------------------------

    def _transition(
        self,
        task_id: str,
        action: str,
        sources: tuple[State, ...],
        target: State | None,
        mutate: Mutation | None,
    ) -> Task:
        """Move a task from one of ``sources`` to ``target`` (None: stay), rewritten.

        The new content is built, checked and staged before anything moves, so a
        ``mutate`` or a write that fails leaves the task as it was. A replace then
        puts the new content in place and one rename changes the state. A crash
        between the two leaves the new, complete file in the old state, where the
        decision it records is not lost: the daemon's recovery finishes the move
        (a completed result found in tasks/assigned is moved on, not run again).
        """
        with self.lock():
            found = self.locate(task_id)
            if found is None:
                raise TaskNotFoundError(task_id)
            state, path = found
            if state not in sources:
                raise IllegalTransitionError(task_id, action, state, sources)
            task = self.read(path).task
            if task.submitted_at is None:  # a file dropped by hand: its arrival time stands in
                task.submitted_at = utc_iso(path.lstat().st_mtime)
            if mutate is not None:
                mutate(task)
            dest = path if target is None else self.dir(target) / path.name
            data = task.dump()
            parse_task_bytes(data, source=_display(self.root, dest), default_id=task.id)
            tmp = self._stage(data)
            try:
                if dest != path and os.path.lexists(
                    dest
                ):  # a rejected input left from before _occupant
                    raise TaskClashError(task.id, Path(_display(self.root, dest)))
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if dest != path:
                os.rename(path, dest)
                _fsync_dir(path.parent)
            _fsync_dir(dest.parent)
            return task

    def claim(self, task_id: str, assignment: Assignment) -> Task:
        """pending -> assigned. Among racing claimants exactly one wins; others get
        IllegalTransitionError (or TaskNotFoundError if the task vanished)."""

        def assign(task: Task) -> None:
            task.assignment = assignment
            task.not_before = None
            task.waiting_reason = None
            task.attempts.append(
                Attempt(
                    number=assignment.attempt,
                    agent_id=assignment.agent_id,
                    agent_type=assignment.agent_type,
                    started_at=assignment.assigned_at,
                )
            )

        return self._transition(task_id, "claim", ("pending",), "assigned", assign)

    def update(
        self, task_id: str, mutate: Mutation, *, states: tuple[State, ...] = ("assigned",)
    ) -> Task:
        """Rewrite a task where it is (heartbeat, progress, merge outcome); the state
        is read under the lock, so a task that moved meanwhile is never moved back."""
        return self._transition(task_id, "update", states, None, mutate)

    def annotate_pending(self, task_id: str, mutate: Mutation) -> Task:
        """Rewrite a pending task (the reason it waits); parsed fields stay as submitted."""
        task = self._transition(task_id, "annotate", ("pending",), None, mutate)
        self._forget(f"{task_id}.yaml")
        return task

    def complete(self, task_id: str, mutate: Mutation | None = None) -> Task:
        """assigned -> completed."""

        def finish(task: Task) -> None:
            task.assignment = None
            if mutate is not None:
                mutate(task)

        return self._transition(task_id, "complete", ("assigned",), "completed", finish)

    def fail(self, task_id: str, reason: str, mutate: Mutation | None = None) -> Task:
        """assigned or pending -> failed, with the reason in the result."""
        return self._fail(task_id, reason, mutate, "fail")

    def _fail(self, task_id: str, reason: str, mutate: Mutation | None, action: str) -> Task:

        def record(task: Task) -> None:
            task.assignment = None
            if mutate is not None:
                mutate(task)
            if task.result is None:
                task.result = Result()
            task.result.error = reason

        return self._transition(task_id, action, ("pending", "assigned"), "failed", record)

    def requeue(
        self,
        task_id: str,
        reason: str,
        *,
        not_before: str | None = None,
        mutate: Mutation | None = None,
    ) -> Task:
        """assigned -> pending; the attempt stays counted in ``attempts``."""

        def back(task: Task) -> None:
            task.assignment = None
            task.not_before = not_before
            task.waiting_reason = reason
            if mutate is not None:
                mutate(task)

        return self._transition(task_id, "requeue", ("assigned",), "pending", back)

    def retry(self, task_id: str) -> Task:
        """failed -> pending with a fresh count of attempts (the old ones are kept)."""

        def reset(task: Task) -> None:
            task.previous_attempts.extend(task.attempts)
            task.attempts = []
            task.result = None
            task.not_before = None
            task.waiting_reason = None

        return self._transition(task_id, "retry", ("failed",), "pending", reset)

    def cancel(self, task_id: str) -> Task:
        """pending or assigned -> failed, marked cancelled."""
        return self._fail(task_id, "cancelled by the user", None, "cancel")

    # ----- housekeeping ---------------------------------------------------------------

    def sweep_tmp(self, *, now: float | None = None) -> list[str]:
        """Remove temp files whose writer is dead or that are older than an hour."""
        now = time.time() if now is None else now
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return removed
        for entry in entries:
            pid_text = entry.name.split(".", 1)[0]
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            writer_alive = pid_text.isdigit() and _pid_alive(int(pid_text))
            if writer_alive and age < STALE_TMP_SECONDS:
                continue
            if not pid_text.isdigit() and age < STALE_TMP_SECONDS:
                continue
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                continue
        return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_regular(path: Path, source: str) -> bytes:
    """The bytes of a regular file, never through a symlink and never blocking on a
    pipe; at most one byte past the size limit, enough to refuse a larger file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise TaskValidationError(
            "is a symbolic link; links are never followed",
            source=source,
            hint="put the task file itself there",
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise TaskValidationError(
                f"is a {_kind(mode)}, not a regular file",
                source=source,
                hint="put a task file there",
            )
        chunks = []
        remaining = MAX_TASK_BYTES + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "device"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:  # pragma: no cover - a directory that cannot be opened
        if exc.errno in (errno.ENOENT, errno.EACCES):
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _display(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
