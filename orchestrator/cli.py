"""The ``orchestrate`` command: each subcommand parses, calls one function, prints.

Errors are mapped in one place (``main``): a known error prints ``Error: ...`` and
exits 1, Ctrl-C exits 130, anything else exits 3 with the traceback in a log file.
Heavy modules (git, watchdog, the daemon) are imported inside the commands that
need them, so ``status`` stays as quick as the interpreter allows.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from orchestrator.config import Config, find_root, load_config
from protocol.errors import OrchestrateError
from protocol.store import STATES, TaskStore
from protocol.task import PRIORITIES, TaskId, new_task_id, validate_id


class Context:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def root(self) -> Path:
        return find_root(self.directory)

    def config(self) -> Config:
        return load_config(self.root)


pass_ctx = click.make_pass_decorator(Context)


def _json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, default=str))


def _json_rows(rows: list[dict[str, Any]]) -> None:
    """A listing as a JSON array with one row to a line: a row greps whole, and at
    10,000 tasks this takes a quarter of the time of an indented document (the
    json module indents in Python; its C encoder only writes compact text)."""
    import json

    encode = json.JSONEncoder(default=str).encode
    click.echo("[" + ",".join(f"\n  {encode(row)}" for row in rows) + ("\n]" if rows else "]"))


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    help="Run as if started in this directory.",
)
@click.version_option(package_name="orchestrate")
@click.pass_context
def cli(ctx: click.Context, directory: Path) -> None:
    """Run many CLI coding agents in parallel on one git repository.

    Tasks are YAML files in tasks/pending/; each agent works in its own git
    worktree on branch agent/<task id>; finished work is merged into the target
    branch with plumbing commands, or flagged with the files in conflict.
    """
    ctx.obj = Context(directory)


@cli.command()
@click.option("--target", help="Branch that finished work is merged into (created from HEAD).")
@pass_ctx
def init(ctx: Context, target: str | None) -> None:
    """Set up orchestrate.yaml, tasks/ and context/ in this repository."""
    from orchestrator.repo import init_repo

    report = init_repo(ctx.directory, target=target)
    if report.config_written:
        click.echo(f"wrote {report.root / 'orchestrate.yaml'}")
        found = ", ".join(report.agents_found) or "none besides the built-in demo agent"
        click.echo(f"agent CLIs found on PATH: {found}")
    if report.target_created:
        click.echo(f"created merge target branch '{report.target}' from HEAD")
    click.echo("tasks/, context/ and .orchestrate/ are ready (kept out of git status)")
    click.echo('next: orchestrate add "..." then orchestrate start')


@cli.command()
@click.argument("description")
@click.option("--id", "task_id", help="Task id (default: generated, sorts by time).")
@click.option("--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True)
@click.option("--agent", help="Agent type that must run the task.")
@click.option("--fallback-agent", help="Agent type to use while --agent is rate limited.")
@click.option("--depends-on", multiple=True, help="Task id that must be merged first (repeatable).")
@click.option("--timeout-minutes", type=click.FloatRange(min=0, min_open=True))
@click.option("--max-retries", type=click.IntRange(min=0))
@click.option(
    "--context-file", multiple=True, help="File whose text goes into the prompt (repeatable)."
)
@pass_ctx
def add(
    ctx: Context,
    description: str,
    task_id: str | None,
    priority: str,
    agent: str | None,
    fallback_agent: str | None,
    depends_on: tuple[str, ...],
    timeout_minutes: float | None,
    max_retries: int | None,
    context_file: tuple[str, ...],
) -> None:
    """Submit a task; prints its id."""
    from protocol.task import task_from_mapping

    root = ctx.root
    data: dict[str, Any] = {"description": description, "priority": priority}
    for key, value in (
        ("agent", agent),
        ("fallback_agent", fallback_agent),
        ("timeout_minutes", timeout_minutes),
        ("max_retries", max_retries),
    ):
        if value is not None:
            data[key] = value
    if depends_on:
        data["depends_on"] = list(depends_on)
    if context_file:
        data["context_files"] = list(context_file)
    if task_id is not None:
        validate_id(task_id)
    parsed = task_from_mapping(data, source="orchestrate add", default_id=task_id or new_task_id())
    task = parsed.task
    if task_id is None:
        task.id = TaskId("")  # the store picks a fresh id, retrying on the rare clash
    config = ctx.config()
    for name in (task.agent, task.fallback_agent):
        if name is not None and name not in config.agents:
            raise OrchestrateError(
                f"agent type '{name}' is not configured (configured: {', '.join(sorted(config.agents))})"
            )
    submitted = TaskStore(root).submit(task)
    click.echo(submitted.id)


@cli.command()
@click.option(
    "--detach", is_flag=True, help="Run in the background (pid file and log in .orchestrate/)."
)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit when nothing more can run: 0 if every task completed and merged, else 1.",
)
@pass_ctx
def start(ctx: Context, detach: bool, until_idle: bool) -> None:
    """Run the daemon: dispatch tasks, run agents, merge their work."""
    root = ctx.root
    config = ctx.config()
    if detach:
        _start_detached(root, until_idle)
        return
    from orchestrator.daemon import Daemon

    code = Daemon(root, config).run(until_idle=until_idle)
    sys.exit(code)


def _start_detached(root: Path, until_idle: bool) -> None:
    from orchestrator.inspect import read_pid

    existing = read_pid(root)
    if existing is not None:
        raise OrchestrateError(f"a daemon is already running on {root} (pid {existing})")
    log = root / ".orchestrate" / "logs" / "daemon.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator", "-C", str(root), "start"]
    if until_idle:
        argv.append("--until-idle")
    import subprocess

    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = read_pid(root)
        if pid == proc.pid:
            click.echo(f"daemon started, pid {pid}; log: {log}")
            return
        if proc.poll() is not None:
            raise OrchestrateError(
                f"the daemon exited at once with code {proc.returncode}; see {log}"
            )
        time.sleep(0.05)
    raise OrchestrateError(f"the daemon did not report ready within 30s; see {log}")


@cli.command()
@click.option(
    "--now", is_flag=True, help="Kill running agents, keep their work on refs, requeue their tasks."
)
@click.option(
    "--wait/--no-wait", default=None, help="Wait until the daemon has exited (default: with --now)."
)
@pass_ctx
def stop(ctx: Context, now: bool, wait: bool | None) -> None:
    """Ask the daemon to stop (warm: running agents finish first)."""
    import signal

    from orchestrator.inspect import read_pid

    root = ctx.root
    pid = read_pid(root)
    if pid is None:
        raise OrchestrateError(f"no daemon is running on {root}")
    os.kill(pid, signal.SIGUSR1 if now else signal.SIGTERM)
    click.echo(f"asked daemon {pid} to stop {'now' if now else 'after running agents finish'}")
    if wait if wait is not None else now:
        deadline = time.monotonic() + 120
        while read_pid(root) is not None:
            if time.monotonic() > deadline:
                raise OrchestrateError(f"daemon {pid} has not stopped after 120s")
            time.sleep(0.05)
        click.echo("daemon stopped")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Counts per state, the daemon, and what each agent is doing."""
    from orchestrator.inspect import status_report

    report = status_report(ctx.root, ctx.config())
    if as_json:
        _json(report)
        return
    counts = report["counts"]
    click.echo("tasks: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    if report["rejected_files"]:
        click.echo(
            f"rejected input files: {report['rejected_files']} (see 'orchestrate tasks --status failed')"
        )
    pid = report["daemon_pid"]
    click.echo(f"daemon: {'running, pid ' + str(pid) if pid else 'not running'}")
    click.echo(f"merge target: {report['target']}")
    for row in report["agents"]:
        line = f"  {row['agent']:<20} {row['state']}"
        if row["task"]:
            line += f"  {row['task']} ({row['elapsed_seconds'] or 0:.0f}s)"
        click.echo(line)
    for agent_type, until in report["cooling"].items():
        when = time.strftime("%H:%M:%S", time.localtime(until))
        click.echo(f"cooling down: {agent_type} until {when} (usage limit)")
    if report["cost_usd"] or report["tokens"]:
        total = sum(report["cost_usd"].values())
        parts = [
            f"{t}: ${report['cost_usd'].get(t, 0):.4f}, {report['tokens'].get(t, 0)} tokens"
            for t in sorted(set(report["cost_usd"]) | set(report["tokens"]))
        ]
        budget = report["max_cost_usd"]
        click.echo(
            f"cost: ${total:.4f}"
            + (f" of ${budget:.2f}" if budget is not None else "")
            + " ("
            + "; ".join(parts)
            + ")"
        )


@cli.command()
@click.option("--status", "state", type=click.Choice(STATES), help="Only tasks in this state.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tasks(ctx: Context, state: str | None, as_json: bool) -> None:
    """List tasks, with why pending ones wait."""
    import gc

    from orchestrator.inspect import task_rows

    # a listing makes some ten objects per task, none of them in a cycle, and exits:
    # the collector would only walk them again and again (20 ms at 10,000 tasks)
    gc.disable()

    states = tuple(s for s in STATES if state is None or s == state)
    rows = task_rows(ctx.root, ctx.config(), states)
    if as_json:
        _json_rows(rows)
        return
    table = []
    for r in rows:
        note = r["waiting_on"] or (
            f"{r['merge_status']}" + (f": {', '.join(r['conflicts'])}" if r["conflicts"] else "")
            if r["merge_status"]
            else (r["error"] or "")
        )
        table.append([r["id"], r["state"], r["priority"] or "", r["agent"] or "", note[:100]])
    _table(table, ["ID", "STATE", "PRIORITY", "AGENT", "MERGE / WAITING ON / ERROR"])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def agents(ctx: Context, as_json: bool) -> None:
    """Each agent slot: busy or free, its task and elapsed time."""
    from orchestrator.inspect import agent_rows

    rows = agent_rows(ctx.root, ctx.config(), TaskStore(ctx.root), time.time())
    if as_json:
        _json_rows(rows)
        return
    _table(
        [
            [
                r["agent"],
                r["type"],
                r["state"],
                r["task"] or "",
                f"{r['elapsed_seconds']:.0f}s" if r["elapsed_seconds"] is not None else "",
            ]
            for r in rows
        ],
        ["AGENT", "TYPE", "STATE", "TASK", "ELAPSED"],
    )


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def show(ctx: Context, task_id: str, as_json: bool) -> None:
    """Everything about one task: its file, attempts, result, tokens and cost."""
    state, task = TaskStore(ctx.root).load(task_id)
    data = {"state": state, **task.to_dict()}
    if as_json:
        _json(data)
        return
    import yaml

    click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


@cli.command()
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the task runs.")
@click.option("--attempt", type=int, help="Which attempt (default: the latest).")
@pass_ctx
def logs(ctx: Context, task_id: str, follow: bool, attempt: int | None) -> None:
    """Print an agent's raw output for a task."""
    root = ctx.root
    store = TaskStore(root)
    log_dir = root / ".orchestrate" / "logs"
    found = sorted(
        log_dir.glob(f"{task_id}.*.log"),
        key=lambda p: int(p.name.split(".")[-2]) if p.name.split(".")[-2].isdigit() else 0,
    )
    if attempt is not None:
        found = [p for p in found if p.name == f"{task_id}.{attempt}.log"]
    if not found:
        store.load(task_id)  # says so if the task does not exist
        raise OrchestrateError(f"task '{task_id}' has no agent log yet (it has not started)")
    path = found[-1]
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                continue
            if not follow:
                break
            located = store.locate(task_id)
            if located is None or located[0] != "assigned":
                break
            time.sleep(0.2)


@cli.command()
@click.argument("task_id")
@pass_ctx
def retry(ctx: Context, task_id: str) -> None:
    """Move a failed task back to pending with a fresh count of attempts."""
    TaskStore(ctx.root).retry(task_id)
    click.echo(f"{task_id} is pending again")


@cli.command()
@click.argument("task_id")
@pass_ctx
def cancel(ctx: Context, task_id: str) -> None:
    """Cancel a pending or running task (its agent is stopped, its work kept)."""
    TaskStore(ctx.root).cancel(task_id)
    click.echo(f"{task_id} cancelled (moved to tasks/failed/)")


@cli.command()
@click.argument("task_id")
@pass_ctx
def merge(ctx: Context, task_id: str) -> None:
    """Merge a completed task's branch by hand, e.g. after fixing a conflict."""
    from orchestrator.repo import merge_task

    outcome = merge_task(ctx.root, ctx.config(), task_id)
    if outcome.status == "merged":
        click.echo(f"merged {task_id} into {outcome.target} ({(outcome.commit or '')[:12]})")
        return
    detail = ", ".join(outcome.conflicts) if outcome.conflicts else outcome.message
    raise OrchestrateError(f"{task_id} was not merged: {outcome.status}: {detail}")


@cli.command()
@pass_ctx
def clean(ctx: Context) -> None:
    """Delete branches of merged tasks (and the worktrees, when no daemon runs)."""
    from orchestrator.repo import clean as clean_repo

    removed = clean_repo(ctx.root, ctx.config())
    click.echo("removed: " + (", ".join(removed) if removed else "nothing"))


@cli.command()
@pass_ctx
def doctor(ctx: Context) -> None:
    """Check git, the configuration and every configured agent's executable."""
    from orchestrator.repo import doctor as run_doctor

    checks = run_doctor(ctx.root)
    for check in checks:
        click.echo(f"{'ok ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if not all(c.ok for c in checks):
        raise OrchestrateError("some checks failed (see above)")


@cli.command()
@click.option(
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to make the demo repository (default: a new temp directory).",
)
def demo(path: Path | None) -> None:
    """Make a sample repository and run a handful of tasks with the built-in demo agent."""
    from orchestrator.demo import run_demo

    sys.exit(run_demo(path, echo=click.echo))


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="orchestrate", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except OrchestrateError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        import tempfile
        import traceback

        fd, log = tempfile.mkstemp(prefix="orchestrate-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        click.echo(f"Error: an unexpected failure; the traceback is in {log}", err=True)
        return 3
    return 0
