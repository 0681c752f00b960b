"""Fixtures every test shares. Protocol-only helpers live in protocol_helpers.py."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from protocol.store import TaskStore

# processes that multiprocessing keeps for the life of the interpreter, started on
# first use by whichever test comes first; they are not a test's leak
_LONG_LIVED = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _new_children(before: set[int]) -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in before:
            continue
        try:
            cmdline = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            cmdline = ""
        if not any(name in cmdline for name in _LONG_LIVED):
            out.append(child)
    return out


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail a test that leaves a child process (zombies included) or a thread behind."""
    before_pids = {p.pid for p in psutil.Process().children(recursive=True)}
    before_threads = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0  # bounded: a child may be exiting right now
    while True:
        children = _new_children(before_pids)
        threads = [t for t in threading.enumerate() if t not in before_threads and t.is_alive()]
        if not children and not threads:
            return
        if time.monotonic() > deadline:
            for child in children:
                child.kill()
            leaks = [f"child process {c.pid}" for c in children]
            leaks += [f"thread {t.name!r}" for t in threads]
            pytest.fail(f"the test leaked {', '.join(leaks)}")
        time.sleep(0.02)


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    """A TaskStore with its layout made, rooted in a fresh directory."""
    s = TaskStore(tmp_path, lock_timeout=10.0)
    s.ensure_layout()
    return s


@pytest.fixture(autouse=True, scope="session")
def _no_session_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if it leaves temp files outside pytest's own directory, or any
    process (an orphaned agent, a daemon) still running from a test's directory."""
    tmp = Path(tempfile.gettempdir())
    base = tmp_path_factory.getbasetemp().resolve()
    before = set(os.listdir(tmp))
    yield
    deadline = time.monotonic() + 10.0
    while True:
        strays = []
        for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
            try:
                text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
            except psutil.Error:
                continue
            if str(base) in text and proc.pid != os.getpid():
                strays.append(proc)
        new_files = sorted(
            name for name in set(os.listdir(tmp)) - before if not name.startswith("pytest-of-")
        )
        if not strays and not new_files:
            return
        if time.monotonic() > deadline:
            for proc in strays:
                proc.kill()
            raise AssertionError(
                f"the test run leaked processes {[p.pid for p in strays]} "
                f"and temp files {new_files[:20]}"
            )
        time.sleep(0.1)
