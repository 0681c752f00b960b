"""One agent run: argv from the configuration, its own process group, capped output.

The task's text reaches the agent as one argv element, a file, or the
environment, never through a shell. The agent runs in a new session so that a
timeout or a stop can signal its whole process tree; when the agent itself exits,
whatever it left running in its group is killed, so nothing outlives a run.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import AgentConfig
from orchestrator.git import clean_env, orchestrate_identity
from protocol.errors import OrchestrateError

READ_CHUNK = 64 * 1024
MAX_ARG_BYTES = 128 * 1024  # Linux's MAX_ARG_STRLEN: one argv element, with its NUL
TAIL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Invocation:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path


def expand_command(
    command: Sequence[str], *, prompt: str, prompt_file: Path, task_id: str, worktree: Path
) -> tuple[str, ...]:
    """Substitute placeholders element by element; the prompt stays one argument."""
    values = {
        "{prompt_file}": str(prompt_file),
        "{task_id}": task_id,
        "{worktree}": str(worktree),
    }
    uses_prompt = any("{prompt}" in a or "{prompt_file}" in a for a in command)
    argv: list[str] = []
    for arg in command:
        if arg == "{prompt}":
            argv.append(prompt)
            continue
        for key, value in values.items():
            arg = arg.replace(key, value)
        arg = arg.replace("{prompt}", prompt)
        argv.append(arg)
    if not uses_prompt:
        argv.append(prompt)
    return tuple(argv)


class AgentRun:
    """A started agent process, its output pump, and its reaper."""

    def __init__(
        self,
        invocation: Invocation,
        *,
        log_path: Path,
        log_cap_bytes: int,
        on_exit: Callable[[], None],
    ) -> None:
        self.invocation = invocation
        self.log_path = log_path
        self.log_cap_bytes = log_cap_bytes
        self._on_exit = on_exit
        self.started_monotonic = time.monotonic()
        self.term_sent_at: float | None = None
        self.kill_sent = False
        self.timed_out = False
        self.stop_reason: str | None = None
        self.bytes_seen = 0
        self.bytes_omitted = 0
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._stop_reading = threading.Event()
        self._done = threading.Event()
        self.returncode: int | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by the pump thread
        try:
            self.proc = subprocess.Popen(
                invocation.argv,
                cwd=invocation.cwd,
                env=dict(invocation.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError:
            self._log.close()
            raise
        self.pid = self.proc.pid
        self._pump = threading.Thread(
            target=self._read_output, name=f"pump-{self.pid}", daemon=True
        )
        self._reaper = threading.Thread(target=self._reap, name=f"reap-{self.pid}", daemon=True)
        self._pump.start()
        self._reaper.start()

    # ----- threads --------------------------------------------------------------------

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    if self._stop_reading.is_set():
                        break
                    continue
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    break
                self._take(chunk)
        finally:
            self._finish_log()
            self.proc.stdout.close()

    def _take(self, chunk: bytes) -> None:
        self.bytes_seen += len(chunk)
        room = self.log_cap_bytes - (self.bytes_seen - len(chunk))
        if room > 0:
            self._log.write(chunk[:room])
            chunk = chunk[room:]
        if chunk:
            # past the cap keep only a bounded tail, so a flood costs no memory
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
                dropped = self._tail.popleft()
                self._tail_size -= len(dropped)
                self.bytes_omitted += len(dropped)

    def _finish_log(self) -> None:
        if self._tail:
            self._log.write(
                f"\n[orchestrate: output over the log cap of {self.log_cap_bytes} bytes; "
                f"{self.bytes_omitted} bytes omitted, the last {self._tail_size} follow]\n".encode()
            )
            for part in self._tail:
                self._log.write(part)
        self._log.close()

    def _reap(self) -> None:
        self.proc.wait()
        # the agent is gone: anything it left in its process group is an orphan
        _signal_group(self.pid, signal.SIGKILL)
        self._stop_reading.set()
        self._pump.join()
        self.returncode = self.proc.returncode
        self._done.set()
        self._on_exit()

    # ----- control --------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def truncated(self) -> bool:
        return self.bytes_seen > self.log_cap_bytes

    def elapsed(self) -> float:
        return time.monotonic() - self.started_monotonic

    def terminate(self, reason: str) -> None:
        """SIGTERM to the whole group; the caller escalates with ``kill`` after a grace."""
        if self.term_sent_at is None:
            self.stop_reason = reason
            self.term_sent_at = time.monotonic()
            _signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        self.kill_sent = True
        _signal_group(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> bool:
        finished = self._done.wait(timeout)
        if finished:
            self._reaper.join()
        return finished

    def output_tail(self, limit: int = 256 * 1024) -> str:
        """The last ``limit`` bytes the agent printed, as text."""
        try:
            with open(self.log_path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - limit))
                data = fh.read()
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_process_group(pid: int, started: float | None, grace: float = 2.0) -> bool:
    """Kill the group led by ``pid`` left by a previous daemon, if it is still that process.

    ``started`` is the process start time recorded at launch; a different start time
    means the pid was reused by an unrelated process, which is left alone.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False
    except psutil.NoSuchProcess:
        _signal_group(pid, signal.SIGKILL)  # its children may still hold the group
        return False
    _signal_group(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.TimeoutExpired):
        proc.wait(grace)
    _signal_group(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.TimeoutExpired, psutil.NoSuchProcess):
        proc.wait(grace)
    return True


def build_invocation(
    agent: AgentConfig,
    *,
    slot: str,
    task_id: str,
    prompt: str,
    prompt_file: Path,
    worktree: Path,
    root: Path,
) -> Invocation:
    """The argv, environment and directory for one run of ``agent`` on a task."""
    command: Sequence[str] = agent.command
    extra_env: dict[str, str] = {}
    agent_env = dict(agent.env)
    if agent.preset is not None:
        from orchestrator.presets import PRESETS, PresetSettings

        preset = PRESETS[agent.preset]
        settings = PresetSettings(model=agent.model, extra_args=agent.extra_args)
        if not command:
            command = preset.command(settings)
        slot_home = Path(root) / ".orchestrate" / "homes" / slot
        slot_home.mkdir(parents=True, exist_ok=True)
        user_env = dict(os.environ)
        if preset.config_var is not None and preset.config_var in agent_env:
            # the user's config dir is where the slot's own dir links its files from;
            # it does not replace the slot's dir, which keeps parallel runs apart
            source = Path(os.path.expanduser(agent_env.pop(preset.config_var)))
            user_env[preset.config_var] = str(source if source.is_absolute() else root / source)
        extra_env.update(preset.environment(settings, slot_home, user_env))
    elif agent.extra_args:
        command = [*command, *agent.extra_args]
    argv = expand_command(
        command, prompt=prompt, prompt_file=prompt_file, task_id=task_id, worktree=worktree
    )
    longest = max(len(arg.encode("utf-8", errors="surrogateescape")) for arg in argv)
    if longest >= MAX_ARG_BYTES:
        raise OrchestrateError(
            f"the prompt of task '{task_id}' makes a {longest}-byte argument, over the "
            f"{MAX_ARG_BYTES} bytes Linux allows in one; use {{prompt_file}} in "
            f"agents.{agent.name}.command, or lower limits.prompt_budget_bytes"
        )
    extra_env.update(agent_env)
    extra_env.update(orchestrate_identity(f"orchestrate agent {slot}"))
    extra_env.update(
        {
            "ORCHESTRATE_TASK_ID": task_id,
            "ORCHESTRATE_AGENT_ID": slot,
            "ORCHESTRATE_PROMPT_FILE": str(prompt_file),
            "ORCHESTRATE_CONTEXT_DIR": str(Path(root) / "context"),
            "ORCHESTRATE_WORKTREE": str(worktree),
        }
    )
    env = clean_env(extra_env)
    env.pop("LC_ALL", None)  # clean_env pins it for git's messages; agents keep the user's locale
    if "LC_ALL" in os.environ:
        env["LC_ALL"] = os.environ["LC_ALL"]
    return Invocation(argv=argv, env=env, cwd=worktree)
