"""The shared context/ directory: prompts in, agent outputs and project state out."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from protocol.task import Task

CONTEXT_DIR = Path("context")
OUTPUTS_DIR = CONTEXT_DIR / "agent_outputs"
OUTPUT_SUMMARY_BYTES = 20_000


def output_path(root: Path, task_id: str) -> Path:
    return Path(root) / OUTPUTS_DIR / f"{task_id}_output.md"


def _file_mode() -> int:
    """0666 less the umask, as open() would make a new file (mkstemp makes 0600). The
    umask is read, not set and restored, which other threads could see half-done."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


FILE_MODE = _file_mode()


def atomic_write(path: Path, text: str, *, stage: tuple[Path, str] | None = None) -> None:
    """Make ``path`` hold ``text`` in one rename. ``stage`` (a folder on the same file
    system, a name prefix) writes the temporary file there instead, and then a
    missing parent folder is an error (FileNotFoundError), not made."""
    if stage is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        where, prefix = path.parent, f".{path.name}."
    else:
        where, prefix = stage
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=where)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cut_middle(text: str, budget: int, what: str) -> str:
    """Keep the head and tail of ``text`` within ``budget`` characters, saying what went."""
    if len(text) <= budget:
        return text
    marker = f"\n\n[... {{}} characters of {what} cut here to fit the prompt budget ...]\n\n"
    keep = max(0, budget - len(marker) - 10)
    head = text[: keep * 2 // 3]
    tail = text[len(text) - (keep - len(head)) :] if keep > len(head) else ""
    return head + marker.format(len(text) - len(head) - len(tail)) + tail


def build_prompt(root: Path, task: Task, budget: int) -> tuple[str, list[str]]:
    """The agent's prompt: the description, the named context files, and the outputs
    of the tasks it depends on, within ``budget`` characters. Returns the notes
    (missing files, cuts) that the daemon reports."""
    notes: list[str] = []
    extras: list[str] = []
    for name in task.context_files:
        path = Path(root) / name
        try:
            content = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            notes.append(f"context file '{name}' was not found")
            continue
        extras.append(f"### {name}\n\n{content.rstrip()}\n")
    for dep in task.depends_on:
        try:
            content = output_path(root, dep).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        extras.append(f"### Output of task {dep}\n\n{content.rstrip()}\n")
    description = task.description.rstrip()
    if len(description) > budget:
        notes.append("the description was cut to fit the prompt budget")
        description = cut_middle(description, budget, "the description")
    prompt = description + "\n"
    if extras:
        body = "\n".join(extras)
        room = budget - len(prompt) - 40
        if len(body) > room:
            notes.append(f"context was cut to fit the prompt budget of {budget} characters")
            body = cut_middle(body, max(room, 0), "context")
        prompt += "\n## Context\n\n" + body
    return prompt, notes


def write_output(root: Path, task: Task, header: Mapping[str, Any], log_tail: str) -> Path:
    path = output_path(root, task.id)
    lines = [f"# Output of task {task.id}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if value is not None]
    summary = log_tail[-OUTPUT_SUMMARY_BYTES:]
    lines += ["", "## What the agent printed (last part)", "", "```", summary.rstrip(), "```", ""]
    atomic_write(path, "\n".join(lines))
    return path


BACKGROUND_SHARE = 0.02  # of the daemon's time, at most, for work that grows with the tree


def paced(interval: float, cost: float) -> float:
    """The wait before periodic work that took ``cost`` seconds runs again: ``interval``,
    or longer once the work has grown with the task tree, so that it takes at most
    BACKGROUND_SHARE of the daemon's time (and a long run does not turn quadratic)."""
    return max(interval, cost / BACKGROUND_SHARE)


class ContextWriter:
    """Keeps context/completed_tasks.json and context/current_state.md up to date.

    Rewriting a file of every completed task on each completion would make a long
    run quadratic, so completions are collected and written at most every
    ``interval`` seconds (longer when a write has grown costly, see ``paced``), and
    always when the daemon goes idle or stops.
    """

    def __init__(self, root: Path, interval: float = 2.0) -> None:
        self.root = Path(root)
        self.interval = interval
        self.completed_path = self.root / CONTEXT_DIR / "completed_tasks.json"
        self.state_path = self.root / CONTEXT_DIR / "current_state.md"
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._last_write = 0.0
        self._spacing = interval
        try:
            for entry in json.loads(self.completed_path.read_text(encoding="utf-8")):
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    self._entries[entry["id"]] = entry
        except (FileNotFoundError, ValueError):
            pass

    def record(self, task: Task) -> None:
        result = task.result
        merge = result.merge if result is not None else None
        self._entries[task.id] = {
            "id": task.id,
            "description": task.title,
            "agent": result.agent_id if result else None,
            "branch": result.branch if result else None,
            "commit": result.commit if result else None,
            "files_changed": result.files_changed if result else [],
            "merge_status": merge.status if merge else None,
            "merge_commit": merge.commit if merge else None,
            "output_file": result.output_file if result else None,
            "finished_at": task.attempts[-1].ended_at if task.attempts else None,
        }
        self._dirty = True

    def due(self, *, force: bool = False) -> bool:
        """Whether ``flush`` would write now (the caller can skip gathering its input)."""
        return force or (self._dirty and time.monotonic() - self._last_write >= self._spacing)

    def flush(
        self,
        *,
        running: Iterable[tuple[str, str, float]],
        waiting: Mapping[str, str],
        counts: Mapping[Any, int],
        force: bool = False,
    ) -> bool:
        """Write both files if something changed; ``running`` is (task, agent, seconds)."""
        if not self.due(force=force):
            return False
        now = time.monotonic()
        atomic_write(self.completed_path, json.dumps(list(self._entries.values()), indent=1))
        lines = [
            "# Current state",
            "",
            f"Updated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. "
            + ", ".join(f"{n} {state}" for state, n in counts.items()),
            "",
            "## Running",
            "",
        ]
        lines += [f"- {tid} on {agent}, {secs:.0f}s" for tid, agent, secs in running] or ["- none"]
        lines += ["", "## Waiting", ""]
        lines += [f"- {tid}: {why}" for tid, why in sorted(waiting.items())] or ["- none"]
        lines += ["", "## Done (most recent last)", ""]
        recent = list(self._entries.values())[-50:]
        lines += [
            f"- {e['id']}: {e['description']} (merge: {e['merge_status']})" for e in recent
        ] or ["- none"]
        atomic_write(self.state_path, "\n".join(lines) + "\n")
        self._dirty = False
        self._last_write = time.monotonic()
        self._spacing = paced(self.interval, self._last_write - now)
        return True

    def mark_dirty(self) -> None:
        self._dirty = True
