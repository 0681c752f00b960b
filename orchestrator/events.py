"""The event log: one JSON object per line in .orchestrate/events.jsonl.

The daemon appends; ``logs``, ``status`` and any UI read. Each event is also
printed as one readable line when the daemon runs in the foreground.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS_FILE = Path(".orchestrate") / "events.jsonl"


class EventLog:
    def __init__(self, root: Path, echo: Callable[[str], None] | None = None) -> None:
        self.path = Path(root) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        # O_APPEND: each line lands whole even if another process appends too
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, kind: str, text: str, **fields: Any) -> None:
        now = time.time()
        record = {"time": round(now, 3), "event": kind, "message": text, **fields}
        os.write(self._fd, (json.dumps(record, default=str) + "\n").encode("utf-8"))
        if self.echo is not None:
            self.echo(f"{time.strftime('%H:%M:%S', time.localtime(now))} {text}")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(root: Path, task_id: str | None = None) -> list[dict[str, Any]]:
    path = Path(root) / EVENTS_FILE
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if task_id is None or record.get("task") == task_id:
                    out.append(record)
    except FileNotFoundError:
        pass
    return out
