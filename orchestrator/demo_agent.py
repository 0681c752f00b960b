"""The built-in demo agent: a deterministic local program that edits files as the
task says, so orchestrate can be tried and tested with no model and no API key.

It reads the task's description from $ORCHESTRATE_PROMPT_FILE (the part before
the "## Context" section) and carries out lines of these forms:

    write PATH: TEXT        create or overwrite PATH with TEXT
    append PATH: TEXT       add TEXT as a new line at the end of PATH
    replace PATH: OLD => NEW
    sleep SECONDS
    commit                  commit its own work (otherwise orchestrate commits it)
    fail [CODE]             exit with CODE (default 1) after doing the lines above

A description with none of these gets its first line written to
notes/<task id>.md, so every task leaves a trace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def _safe_path(text: str) -> Path:
    path = Path(text.strip())
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise SystemExit(f"demo agent: refusing path outside the worktree: {text!r}")
    return path


def main() -> int:
    prompt_file = os.environ.get("ORCHESTRATE_PROMPT_FILE")
    task_id = os.environ.get("ORCHESTRATE_TASK_ID", "task")
    if prompt_file:
        prompt = Path(prompt_file).read_text(encoding="utf-8")
    else:
        prompt = sys.argv[-1] if len(sys.argv) > 1 else ""
    description = prompt.split("\n## Context", 1)[0]
    acted = False
    exit_code = 0
    for raw in description.splitlines():
        line = raw.strip()
        verb, _, rest = line.partition(" ")
        if verb in ("write", "append", "replace") and ":" in rest:
            target, _, text = rest.partition(":")
            path = _safe_path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            text = text.strip()
            if verb == "write":
                path.write_text(text + "\n", encoding="utf-8")
            elif verb == "append":
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(text + "\n")
            else:
                old, sep, new = text.partition("=>")
                if not sep:
                    print(f"demo agent: 'replace' needs OLD => NEW: {line!r}", file=sys.stderr)
                    return 2
                content = path.read_text(encoding="utf-8")
                path.write_text(content.replace(old.strip(), new.strip()), encoding="utf-8")
            print(f"demo agent: {verb} {path}")
            acted = True
        elif verb == "sleep" and rest:
            time.sleep(float(rest))
        elif verb == "commit":
            subprocess.run(["git", "add", "-A"], check=True)
            subprocess.run(
                ["git", "commit", "-q", "--no-verify", "-m", f"demo agent: task {task_id}"],
                check=True,
            )
            print("demo agent: committed")
        elif verb == "fail":
            exit_code = int(rest) if rest.strip().isdigit() else 1
    if not acted and exit_code == 0:
        note = Path("notes") / f"{task_id}.md"
        note.parent.mkdir(parents=True, exist_ok=True)
        first = description.strip().splitlines()[0] if description.strip() else task_id
        note.write_text(f"# {task_id}\n\n{first}\n", encoding="utf-8")
        print(f"demo agent: wrote {note}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
