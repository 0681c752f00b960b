"""The listing cache: it may change how fast a command answers, never what it says."""

from __future__ import annotations

import json
import marshal
import os
import re
import shutil
import subprocess
import sys
import zlib
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from orchestrator import cache
from orchestrator.cache import CACHE_DIR, Shelf
from protocol.store import TaskStore
from protocol.task import Assignment, MergeInfo, Result, Task, TaskId
from tests.helpers import configure, make_repo, orchestrate, wait_for

T0 = 1_800_000_000.0
STAMP = "2027-01-15T08:00:00.000000Z"
SHELVES = [
    "config",
    "tallies",
    "tasks-assigned",
    "tasks-completed",
    "tasks-failed",
    "tasks-pending",
]


def slot(agent_id: str) -> Assignment:
    return Assignment(
        agent_id=agent_id,
        agent_type="demo",
        worktree=f".orchestrate/worktrees/{agent_id}",
        branch="agent/x",
        host="host",
        attempt=1,
        assigned_at=STAMP,
        started_at=STAMP,
    )


def finished(merge: MergeInfo) -> Any:
    def record(task: Task) -> None:
        task.result = Result(agent_id="demo-1", branch=f"agent/{task.id}", merge=merge)

    return record


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Every state, a rejected input, and pending tasks whose waits depend on others."""
    root = make_repo(tmp_path / "repo")
    configure(root, {"demo": {"command": ["demo"], "max_instances": 2}})
    store = TaskStore(root)
    for task_id, fields in [
        ("merged", {}),
        ("conflicted", {}),
        ("running", {}),
        ("broken", {}),
        ("after-merged", {"depends_on": [TaskId("merged")], "priority": "high"}),
        ("after-conflict", {"depends_on": [TaskId("conflicted")]}),
        ("after-ghost", {"depends_on": [TaskId("ghost")]}),
        ("wants-ghost", {"agent": "ghost"}),
    ]:
        task = Task(id=TaskId(task_id), description=f"Do {task_id}.\nIn detail.", **fields)
        store.submit(task, now=T0)
    for task_id, agent_id in [
        ("merged", "demo-1"),
        ("conflicted", "demo-2"),
        ("running", "demo-1"),
    ]:
        store.claim(task_id, slot(agent_id))
    target = "orchestrate/integration"
    store.complete("merged", finished(MergeInfo(status="merged", target=target)))
    conflict = MergeInfo("conflict", target, ["README.md"], message="conflict in README.md")
    store.complete("conflicted", finished(conflict))
    store.fail("broken", "tests failed")
    (store.dir("pending") / "junk.yaml").write_bytes(b"description: [unclosed\n")
    store.intake(now=T0 + 3600)  # long after the junk was written: rejected, not deferred
    return root


def settle(root: Path) -> None:
    """Wait until the file system's clock has passed the last change to any file of
    ``root``: the cache keeps nothing that changed in the clock's current tick."""
    newest = max(
        p.lstat().st_ctime_ns for p in root.rglob("*") if ".git" not in p.relative_to(root).parts
    )
    probe = root / ".orchestrate" / "clock-probe"

    def moved_on() -> bool:
        probe.unlink(missing_ok=True)
        probe.touch()
        return probe.stat().st_mtime_ns > newest

    wait_for(moved_on, timeout=10, what="the file system's clock to move on")
    probe.unlink()


def run(root: Path, *args: str) -> tuple[str, bool]:
    """What the command prints, and whether it imported PyYAML to say it."""
    code = (
        "import sys; from orchestrator.cli import main; rc = main(sys.argv[1:]);"
        "print('yaml' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout, result.stderr.strip().endswith("True")


def without_clock(output: str) -> Any:
    """The JSON of ``status`` or ``agents`` with each agent's elapsed time, which moves
    between two runs, checked to be there and then left out."""
    data = json.loads(output)
    for row in data["agents"] if isinstance(data, dict) else data:
        assert row["task"] is None or isinstance(row["elapsed_seconds"], float)
        row.pop("elapsed_seconds")
    return data


def drop_cache(root: Path) -> None:
    shutil.rmtree(root / CACHE_DIR, ignore_errors=True)


def test_warm_commands_answer_as_cold_ones_without_parsing_yaml(repo: Path) -> None:
    settle(repo)
    for args in [("tasks", "--json"), ("tasks",), ("tasks", "--status", "failed"), ("status",)]:
        drop_cache(repo)
        cold, cold_yaml = run(repo, *args)
        warm, warm_yaml = run(repo, *args)
        # a busy agent's elapsed seconds may tick between the two runs
        assert re.sub(r"\(-?\d+s\)", "(s)", warm) == re.sub(r"\(-?\d+s\)", "(s)", cold)
        assert (cold_yaml, warm_yaml) == (True, False)
    for args in [("status", "--json"), ("agents", "--json")]:
        drop_cache(repo)
        cold, _ = run(repo, *args)
        warm, _ = run(repo, *args)
        assert without_clock(warm) == without_clock(cold)
    listing = run(repo, "tasks", "--json")[0]
    rows = {r["id"]: r for r in json.loads(listing)}
    assert len(listing.splitlines()) == len(rows) + 2  # one row to a line
    run(repo, "status")
    assert sorted(p.stem for p in (repo / CACHE_DIR).iterdir()) == SHELVES
    assert rows["after-merged"]["waiting_on"] == "ready: starts when the daemon next looks"
    assert rows["after-conflict"]["waiting_on"] == (
        "dependency 'conflicted' is completed but not merged: conflict in README.md"
    )
    assert rows["after-ghost"]["waiting_on"] == "depends on 'ghost', which does not exist"
    assert rows["wants-ghost"]["waiting_on"] == (
        "agent type 'ghost' is not configured (configured: demo)"
    )
    assert rows["junk.yaml"]["description"] == "(rejected input file)"
    assert rows["running"]["agent"] == "demo-1"


def test_a_rewritten_task_is_read_again(repo: Path) -> None:
    settle(repo)
    run(repo, "tasks", "--json")
    run(repo, "status")
    store = TaskStore(repo)

    def conflicted(task: Task) -> None:
        assert task.result is not None and task.result.merge is not None
        task.result.merge.status = "conflict"

    store.update("merged", conflicted, states=("completed",))  # replaced by rename
    path = store.dir("completed") / "conflicted.yaml"
    before = path.stat()
    with open(path, "r+b") as fh:  # in place, the same size, the same inode
        data = fh.read()
        fh.seek(0)
        fh.write(data.replace(b"Do conflicted.", b"Do CONFLICTED."))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as rsync -t would: ctime moves
    assigned = store.dir("assigned") / "running.yaml"
    with open(assigned, "r+b") as fh:
        data = fh.read()
        fh.seek(0)
        fh.write(data.replace(b"agent_id: demo-1", b"agent_id: demo-2"))
    rows = {r["id"]: r for r in json.loads(run(repo, "tasks", "--json")[0])}
    assert rows["merged"]["merge_status"] == "conflict"
    assert rows["conflicted"]["description"] == "Do CONFLICTED."
    assert rows["running"]["agent"] == "demo-2"
    assert "demo-2               busy  running" in run(repo, "status")[0]


def test_a_task_file_broken_after_it_was_cached_fails_as_before(repo: Path) -> None:
    settle(repo)
    run(repo, "tasks", "--json")
    path = repo / "tasks" / "completed" / "merged.yaml"
    path.write_text(path.read_text().replace("description:", "description: [", 1))
    warm = orchestrate(repo, "tasks", "--json", check=False)
    drop_cache(repo)
    cold = orchestrate(repo, "tasks", "--json", check=False)
    assert (warm.returncode, warm.stderr) == (cold.returncode, cold.stderr)
    assert cold.returncode == 1
    assert cold.stderr.startswith("Error: tasks/completed/merged.yaml")


@pytest.mark.parametrize(
    "damage", ["truncated", "garbage", "one bit flipped", "older format", "other schema"]
)
def test_a_damaged_cache_file_is_ignored_and_replaced(repo: Path, damage: str) -> None:
    settle(repo)
    expected, _ = run(repo, "tasks", "--json")
    shelf = repo / CACHE_DIR / "tasks-completed.marshal"
    data = shelf.read_bytes()
    if damage == "truncated":
        shelf.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        shelf.write_bytes(os.urandom(len(data)))
    elif damage == "one bit flipped":  # marshal never sees it: the checksum fails first
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        shelf.write_bytes(bytes(flipped))
    else:  # a file another version wrote, whose values would change the answer if trusted
        header, entries = marshal.loads(data[cache._CHECK.size :])
        for _, summary in entries.values():
            summary["row"]["description"] = "STALE"
        at = 1 if damage == "older format" else 5
        header = (*header[:at], header[at] - 1, *header[at + 1 :])
        payload = marshal.dumps((header, entries))
        shelf.write_bytes(cache._CHECK.pack(cache.MAGIC, zlib.crc32(payload)) + payload)
    listed, parsed_yaml = run(repo, "tasks", "--json")
    assert listed == expected
    assert parsed_yaml
    listed, parsed_yaml = run(repo, "tasks", "--json")
    assert listed == expected
    assert not parsed_yaml  # the damaged file was replaced by a good one


def test_a_cache_that_cannot_be_written_still_gives_the_answer(repo: Path) -> None:
    def answers() -> tuple[str, Any]:
        return run(repo, "tasks", "--json")[0], without_clock(run(repo, "status", "--json")[0])

    expected = answers()
    drop_cache(repo)
    (repo / CACHE_DIR).write_text("not a directory\n")
    settle(repo)
    assert answers() == expected
    assert answers() == expected
    shutil.rmtree(repo / ".orchestrate")  # never made by a command that only reads
    assert answers() == expected
    assert not (repo / ".orchestrate").exists()


def test_configuration_edits_are_seen_at_once(repo: Path) -> None:
    config = repo / "orchestrate.yaml"
    settle(repo)
    assert "merge target: orchestrate/integration\n" in run(repo, "status")[0]
    text = config.read_text()
    with open(config, "r+") as fh:  # in place and the same size, right after a listing
        fh.write(text.replace("orchestrate/integration", "orchestrate/integrati0n"))
    assert "merge target: orchestrate/integrati0n\n" in run(repo, "status")[0]
    config.write_text(text.replace("max_instances: 2", "max_instances: 0"))
    settle(repo)
    for _ in range(2):  # the YAML is cached, its validation is not
        failed = orchestrate(repo, "status", check=False)
        assert failed.stderr.strip() == (
            "Error: orchestrate.yaml: 'agents.demo.max_instances' must be a whole number "
            "above 0, not 0"
        )
    config.write_text("agents: [\n")
    failed = orchestrate(repo, "status", check=False)
    assert failed.stderr.startswith("Error: orchestrate.yaml, line 2: not valid YAML")


def test_fields_the_cache_cannot_keep_and_files_that_do_not_parse(repo: Path) -> None:
    """A date in an unknown field (marshal keeps no dates) and a half-written file in
    tasks/pending (intake has not looked yet) are parsed on every listing."""
    pending = repo / "tasks" / "pending"
    (pending / "dated.yaml").write_text("description: Has a date\nreviewed: 2026-01-01\n")
    (pending / "half.yaml").write_text("description: [half\n")
    settle(repo)
    drop_cache(repo)
    cold = run(repo, "tasks", "--json")
    assert run(repo, "tasks", "--json") == cold == run(repo, "tasks", "--json")
    ids = [r["id"] for r in json.loads(cold[0])]
    assert "dated" in ids and "half" not in ids
    assert cold[1]  # still parsed, so still PyYAML


def stat_at(ns: int, inode: int = 7) -> os.stat_result:
    return cast(
        os.stat_result, SimpleNamespace(st_ino=inode, st_size=10, st_mtime_ns=ns, st_ctime_ns=ns)
    )


def refuse() -> str:
    raise AssertionError("parsed again")


def test_a_shelf_keeps_only_files_unchanged_since_before_it_read_them(tmp_path: Path) -> None:
    (tmp_path / ".orchestrate").mkdir()
    future = (int(T0) + 10**6) * 10**9  # a file changed after the clock was read
    with Shelf(tmp_path, "t", schema=1) as shelf:
        assert shelf.value("old", stat_at(1), lambda: "old value") == "old value"
        assert shelf.value("new", stat_at(future), lambda: "new value") == "new value"
        assert shelf.value("plain", stat_at(1), lambda: [T0, {"x": None}]) == [T0, {"x": None}]
        assert shelf.value("dated", stat_at(1), lambda: date(2026, 1, 1)) == date(2026, 1, 1)
        with pytest.raises(ValueError):
            shelf.value("broken", stat_at(1), lambda: int("x"))
    with Shelf(tmp_path, "t", schema=1) as shelf:
        assert shelf.value("old", stat_at(1), refuse) == "old value"
        assert shelf.value("plain", stat_at(1), refuse) == [T0, {"x": None}]
        assert shelf.value("dated", stat_at(1), lambda: "parsed") == "parsed"
        assert shelf.value("new", stat_at(future), lambda: "parsed") == "parsed"
        assert shelf.value("broken", stat_at(1), lambda: "parsed") == "parsed"
    with Shelf(tmp_path, "t", schema=1) as shelf:  # a new inode, size or time is a new file
        assert shelf.value("old", stat_at(1, inode=8), lambda: "renamed") == "renamed"
    with Shelf(tmp_path, "t", schema=2) as shelf:  # another schema trusts nothing
        assert shelf.value("old", stat_at(1, inode=8), lambda: "again") == "again"
    with Shelf(tmp_path, "t", schema=2) as shelf:
        pass  # looks nothing up, so the shelf is written empty
    with Shelf(tmp_path, "t", schema=2) as shelf:
        assert shelf.value("old", stat_at(1, inode=8), lambda: "gone") == "gone"
    assert [p.name for p in (tmp_path / CACHE_DIR).iterdir()] == ["t.marshal"]


def test_a_shelf_that_cannot_be_saved_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / CACHE_DIR / "t.marshal").mkdir(parents=True)  # os.replace cannot land
    with Shelf(tmp_path, "t", schema=1) as shelf:
        assert shelf.value("a", stat_at(1), lambda: "value") == "value"
    assert [p.name for p in (tmp_path / CACHE_DIR).iterdir()] == ["t.marshal"]
    with pytest.raises(KeyError), Shelf(tmp_path, "u", schema=1) as shelf:
        shelf.value("a", stat_at(1), lambda: "value")
        raise KeyError("a failing listing saves nothing")
    assert [p.name for p in (tmp_path / CACHE_DIR).iterdir()] == ["t.marshal"]
