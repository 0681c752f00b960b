"""What commands parsed from files, kept in ``.orchestrate/cache/`` for the next run.

Parsing YAML is most of what ``status`` and ``tasks`` cost (170 µs a task file,
10 ms to import PyYAML at all), and most files are the same as last time. A
shelf is one cache file: for each file it saw (or directory, whose value is
what was counted in it), the file's stamp (inode, size, mtime and ctime in
nanoseconds) and the value read from it. A file whose stamp is unchanged is not
read again.

Task files are replaced by rename, so every write gives them a new inode. A file
edited in place keeps its inode, maybe its size, and within one tick of the file
system's clock its times too (git's "racy clean" problem). So a value is kept
only if the file's times are older than a reading of that clock taken before
the file was read: the time stamp of the new cache file, created first. Any later
change to the file then gets a later time, so a stale value is never served,
whatever the clock's resolution.

The cache changes speed, never an answer. A cache file that is missing, corrupt
(its CRC-32 is checked before marshal reads it), truncated, or written by another
version of orchestrate or Python is ignored and
replaced; a cache that cannot be written (no ``.orchestrate/``, permissions, a
read-only file system) is not written. It is safe to delete at any time.
Concurrent writers replace the file whole (the last one wins), and a crash can
leave no half-written shelf: it is written under a temporary name and renamed.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from orchestrator import __version__

CACHE_DIR = Path(".orchestrate", "cache")
# bump when the layout of a shelf file changes; what a caller keeps has its own schema
FORMAT = 1
STALE_TMP_NS = 3600 * 10**9
MAGIC = b"ORCH"
_CHECK = struct.Struct(">4sI")  # magic, CRC-32 of the marshal payload that follows

Stamp = tuple[int, int, int, int]
V = TypeVar("V")


def stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Shelf:
    """One cache file: file name -> (stamp, parsed value), used as a context manager.

    ``schema`` names the shape of the values a caller keeps: a caller bumps it when
    that shape changes, so no shelf written before is trusted. On a clean exit the
    shelf is written again if anything changed, holding only the files looked up
    since it was opened (so a shelf covers one whole directory, or one file).
    """

    def __init__(self, root: Path, name: str, schema: int) -> None:
        self.path = Path(root) / CACHE_DIR / f"{name}.marshal"
        self._header = ("orchestrate cache", FORMAT, marshal.version, __version__, name, schema)
        self._old = self._load()
        self._new: dict[str, tuple[Stamp, Any]] = {}
        self._added = False
        self._tmp: Path | None = None
        self._fd: int | None = None
        self._clock: int | None = None  # ns, the file system's time; 0: none to be had

    def __enter__(self) -> Shelf:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._save()
        finally:
            self._discard_tmp()

    def value(self, name: str, st: os.stat_result, parse: Callable[[], V]) -> V:
        """What ``parse`` returns for the file ``name`` whose stat is ``st`` (taken
        before it is read): the kept value if the stamp matches, else parse() now.

        An error from parse() propagates and nothing is kept for the file.
        """
        key = stamp(st)
        entry = self._old.get(name)
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == key:
            self._new[name] = entry
            return entry[1]
        clock = self._read_clock()
        value = parse()
        if max(st.st_mtime_ns, st.st_ctime_ns) < clock and _keepable(value):
            self._new[name] = (key, value)
            self._added = True
        return value

    # ----- the file ----------------------------------------------------------------

    def _load(self) -> dict[str, tuple[Stamp, Any]]:
        try:
            data = self.path.read_bytes()
        except OSError:
            return {}
        # marshal is not made to read damaged data (a bad length can ask for gigabytes):
        # only a payload whose checksum holds is read at all
        payload = data[_CHECK.size :]
        if len(data) < _CHECK.size or _CHECK.unpack_from(data) != (MAGIC, zlib.crc32(payload)):
            return {}
        try:
            header, entries = marshal.loads(payload)
        except (EOFError, ValueError, TypeError):
            return {}
        if header != self._header or not isinstance(entries, dict):
            return {}
        return entries

    def _read_clock(self) -> int:
        """The file system's time now, as the mtime of the new cache file created for
        it (0 if there can be none), read once per shelf."""
        if self._clock is None:
            self._clock = 0
            # pid and object: unique among live shelves, so one of that name is a leftover
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{id(self):x}.tmp")
            try:
                with suppress(FileExistsError):
                    os.mkdir(self.path.parent)  # inside .orchestrate/, only where that exists
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
                self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                self._tmp = tmp
                self._clock = os.fstat(self._fd).st_mtime_ns
            except OSError:
                pass
        return self._clock

    def _save(self) -> None:
        if not self._added and len(self._new) == len(self._old):
            return  # nothing added and nothing dropped
        if self._fd is None:
            self._read_clock()  # a shelf that only drops entries still needs its file
        if self._fd is None or self._tmp is None:
            return
        payload = marshal.dumps((self._header, self._new))
        data = _CHECK.pack(MAGIC, zlib.crc32(payload)) + payload
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.close(self._fd)
            self._fd = None
            os.replace(self._tmp, self.path)
            self._tmp = None
            _sweep(self.path.parent, self._read_clock())
        except OSError:
            pass

    def _discard_tmp(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            with suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None


def _sweep(folder: Path, now_ns: int) -> None:
    """Remove temporary files that killed processes left, an hour after they were made."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".tmp"):
                with suppress(FileNotFoundError):
                    if entry.stat().st_mtime_ns < now_ns - STALE_TMP_NS:
                        os.unlink(entry.path)


def _keepable(value: Any) -> bool:
    """Whether marshal keeps ``value`` exactly (plain values only: a task's unknown
    field may hold a date, which it cannot)."""
    try:
        marshal.dumps(value)
    except ValueError:
        return False
    return True
