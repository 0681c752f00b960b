"""Presets for the agent CLIs: command line, environment, and reading the outcome.

Each preset was checked against the real CLI (see tests/test_real_clis.py and
docs/agents.md). The outcome is decided from the CLI's structured output and
from whether the worktree changed, because exit code 0 proves little: Claude
Code exits 0 with `is_error: true`, Aider exits 0 after every model call failed.

Prompts go in as one argv element after the options (after `--` where the CLI
takes a positional prompt), so a task text that starts with `-` stays text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.limits import limit_in, limit_reset


@dataclass(frozen=True)
class AgentOutcome:
    success: bool
    reason: str
    session_id: str | None = None
    turns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    rate_limited: bool = False
    retry_at: float | None = None


@dataclass(frozen=True)
class PresetSettings:
    model: str | None = None
    extra_args: tuple[str, ...] = ()


def generic_outcome(exit_code: int, worktree_changed: bool) -> AgentOutcome:
    """For a plain command: its exit code is all it says."""
    if exit_code == 0:
        note = "" if worktree_changed else " (no files changed)"
        return AgentOutcome(True, f"exit 0{note}")
    return AgentOutcome(False, f"exit {exit_code}")


# ---- reading output ---------------------------------------------------------


def json_objects(output: str) -> Iterator[dict[str, Any]]:
    """Every top-level JSON object in the output: JSON lines, or pretty-printed
    objects starting at the beginning of a line, mixed with plain log lines."""
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        start = output.find("{", pos)
        if start < 0:
            return
        if start > 0 and output[start - 1] != "\n":
            pos = start + 1
            continue
        try:
            value, end = decoder.raw_decode(output, start)
        except ValueError:
            pos = start + 1
            continue
        if isinstance(value, dict):
            yield value
        pos = end


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ERROR_LINE = re.compile(r"error|failed|refused|denied|unreachable|timed? ?out", re.IGNORECASE)


def _last_error(output: str) -> str:
    """The last line that reads like an error, skipping stack frames; else the tail."""
    for line in reversed(output.splitlines()):
        text = line.strip()
        if text and not text.startswith(("at ", "{", "}")) and _ERROR_LINE.search(text):
            return _short(text)
    return _last_lines(output)


def _last_lines(output: str, count: int = 3) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return _short(" | ".join(lines[-count:])) if lines else "no output"


# ---- the presets ------------------------------------------------------------


def _link_user_files(user_dir: Path, slot_dir: Path, names: tuple[str, ...]) -> None:
    """Give a per-slot config dir the user's login and settings by symlink.

    Symlinks, not copies: an OAuth refresh in one slot rotates the token for
    all, and a copy would hold a revoked refresh token. A file already in the
    slot (a test's own config, a user's per-slot override) is left alone.
    """
    slot_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        source, target = user_dir / name, slot_dir / name
        if source.exists() and not target.exists() and not target.is_symlink():
            target.symlink_to(source)


def _model_args(flag: str, settings: PresetSettings) -> list[str]:
    return [flag, settings.model] if settings.model else []


class Preset:
    name: str = ""
    executable: str = ""
    # the variable that names the CLI's config directory: each slot gets its own,
    # and the user's value (from the environment or the agent's `env:`) names the
    # directory whose login and settings files are linked into it
    config_var: str | None = None
    # files the CLI itself writes into the worktree that are not work; the
    # runner should keep them out of "did the worktree change" and of commits
    scratch_patterns: tuple[str, ...] = ()

    def command(self, settings: PresetSettings) -> list[str]:
        raise NotImplementedError

    def environment(
        self, settings: PresetSettings, slot_home: Path, user_env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        return {}

    def _user_dir(self, user_env: Mapping[str, str] | None, default: str) -> Path:
        env = os.environ if user_env is None else user_env
        value = env.get(self.config_var or "")
        return Path(value) if value else Path.home() / default

    def parse(self, exit_code: int, output: str, worktree_changed: bool) -> AgentOutcome:
        raise NotImplementedError

    def _finish(self, worktree_changed: bool, done: str, **figures: Any) -> AgentOutcome:
        if not worktree_changed:
            return AgentOutcome(False, f"{done}, but no files changed in the worktree", **figures)
        return AgentOutcome(True, done, **figures)


class ClaudePreset(Preset):
    """Claude Code in print mode, streaming JSON events so that a run stopped at
    its timeout still leaves its retries and errors in the log.

    `--permission-mode acceptEdits` approves file edits inside the working
    directory (the worktree) and nothing else; Bash and edits elsewhere are
    denied, and the denials are reported. It works as root, unlike
    `--dangerously-skip-permissions`, which Claude Code refuses as root unless
    IS_SANDBOX=1. A user who asks for that flag in extra_args gets IS_SANDBOX=1
    when running as root, since the flag cannot work otherwise.
    """

    name = "claude"
    executable = "claude"
    config_var = "CLAUDE_CONFIG_DIR"
    _user_files = (".credentials.json", "settings.json", "CLAUDE.md")

    def command(self, settings: PresetSettings) -> list[str]:
        return [
            self.executable,
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "acceptEdits",
            *_model_args("--model", settings),
            *settings.extra_args,
            "--",
            "{prompt}",
        ]

    def environment(
        self, settings: PresetSettings, slot_home: Path, user_env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        config = slot_home / "claude"
        _link_user_files(self._user_dir(user_env, ".claude"), config, self._user_files)
        env = {
            "CLAUDE_CONFIG_DIR": str(config),
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        bypass = "--dangerously-skip-permissions" in settings.extra_args or (
            "bypassPermissions" in settings.extra_args
        )
        if bypass and os.geteuid() == 0:
            env["IS_SANDBOX"] = "1"
        return env

    def parse(self, exit_code: int, output: str, worktree_changed: bool) -> AgentOutcome:
        result: dict[str, Any] | None = None
        session_id: str | None = None
        retry_errors: list[str] = []
        limited = False
        for event in json_objects(output):
            session_id = event.get("session_id") or session_id
            kind = event.get("type")
            if kind == "result":
                result = event
            elif kind == "system" and event.get("subtype") == "api_retry":
                status = event.get("error_status")
                # no status: the request got no HTTP answer (refused, reset, DNS)
                got = f"status {status}" if status is not None else "no HTTP response"
                retry_errors.append(f"{event.get('error')} ({got})")
                # only the latest retry counts: a 429 the CLI got past is not a limit,
                # and calling it one would defer (not fail) a run that then timed out
                limited = status == 429
            elif kind == "assistant" and (
                event.get("error") == "rate_limit" or event.get("api_error_status") == 429
            ):
                limited = True
        plain = "\n".join(line for line in output.splitlines() if not line.startswith("{"))
        if result is None:
            limited = limited or limit_in(plain)
            why = f"claude gave no result (exit {exit_code})"
            if retry_errors:
                why += f" after {len(retry_errors)} API retries, last: {retry_errors[-1]}"
            else:
                why += f": {_last_error(plain or output)}"
            return AgentOutcome(
                False,
                why,
                session_id=session_id,
                rate_limited=limited,
                retry_at=limit_reset(plain) if limited else None,
            )
        usage = result.get("usage") or {}
        inputs = [
            _int(usage.get(k))
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ]
        cost = result.get("total_cost_usd")
        figures: dict[str, Any] = {
            "session_id": result.get("session_id") or session_id,
            "turns": _int(result.get("num_turns")),
            "input_tokens": sum(i for i in inputs if i is not None)
            if any(i is not None for i in inputs)
            else None,
            "output_tokens": _int(usage.get("output_tokens")),
            "cost_usd": float(cost) if isinstance(cost, (int, float)) else None,
        }
        text = str(result.get("result") or "")
        if result.get("is_error") or result.get("subtype") != "success":
            limited = (
                limited
                or result.get("api_error_status") == 429
                or (result.get("api_error_type") == "rate_limit_error")
                or limit_in(text)
            )
            return AgentOutcome(
                False,
                f"claude reported {result.get('subtype')}, is_error: {_short(text) or '(no text)'}",
                rate_limited=limited,
                retry_at=limit_reset(text) if limited else None,
                **figures,
            )
        denials = result.get("permission_denials") or []
        done = f"claude finished in {figures['turns']} turns"
        if denials:
            tools = sorted({str(d.get("tool_name")) for d in denials if isinstance(d, dict)})
            done += f"; permission denied {len(denials)} times ({', '.join(tools)})"
        return self._finish(worktree_changed, done, **figures)


class CodexPreset(Preset):
    """`codex exec --json` with the workspace-write sandbox: the agent may write
    inside the worktree (and temp dirs), not elsewhere, and has no network.
    Approval prompts never happen in exec mode; a denied action is an error the
    model sees."""

    name = "codex"
    executable = "codex"
    config_var = "CODEX_HOME"
    _user_files = ("auth.json", "config.toml", "AGENTS.md")

    def command(self, settings: PresetSettings) -> list[str]:
        return [
            self.executable,
            "exec",
            "--json",
            "--color",
            "never",
            "--sandbox",
            "workspace-write",
            *_model_args("--model", settings),
            *settings.extra_args,
            "--",
            "{prompt}",
        ]

    def environment(
        self, settings: PresetSettings, slot_home: Path, user_env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        home = slot_home / "codex"
        _link_user_files(self._user_dir(user_env, ".codex"), home, self._user_files)
        return {"CODEX_HOME": str(home)}

    def parse(self, exit_code: int, output: str, worktree_changed: bool) -> AgentOutcome:
        thread: str | None = None
        turns = 0
        tokens_in = tokens_out = 0
        failure: str | None = None
        errors: list[str] = []
        changes = 0
        for event in json_objects(output):
            kind = event.get("type")
            if kind == "thread.started":
                thread = event.get("thread_id") or thread
            elif kind == "turn.completed":
                turns += 1
                usage = event.get("usage") or {}
                tokens_in += _int(usage.get("input_tokens")) or 0
                tokens_out += _int(usage.get("output_tokens")) or 0
            elif kind == "turn.failed":
                failure = str((event.get("error") or {}).get("message") or "turn failed")
            elif kind == "error":
                errors.append(str(event.get("message")))
            elif kind == "item.completed":
                item = event.get("item") or {}
                if item.get("type") == "file_change" and item.get("status") == "completed":
                    changes += len(item.get("changes") or [])
        figures: dict[str, Any] = {
            "session_id": thread,
            "turns": turns or None,
            "input_tokens": tokens_in if turns else None,
            "output_tokens": tokens_out if turns else None,
        }
        if failure is not None or not turns:
            why = failure or (
                errors[-1]
                if errors
                else f"codex gave no result (exit {exit_code}): {_last_error(output)}"
            )
            text = "\n".join([why, *errors]) if failure is None else why
            limited = limit_in(text) or (not turns and limit_in(output))
            return AgentOutcome(
                False,
                f"codex failed: {_short(why)}",
                rate_limited=limited,
                retry_at=limit_reset(text) if limited else None,
                **figures,
            )
        done = f"codex finished, {changes} file changes"
        if exit_code != 0:
            return AgentOutcome(False, f"{done}, but exit {exit_code}", **figures)
        return self._finish(worktree_changed, done, **figures)


class GeminiPreset(Preset):
    """Gemini CLI headless with `--approval-mode auto_edit`: file edit tools are
    approved (Gemini keeps them inside the workspace), shell commands are not
    offered at all. GEMINI_CLI_HOME gives each slot its own ~/.gemini."""

    name = "gemini"
    executable = "gemini"
    config_var = "GEMINI_CLI_HOME"
    _user_files = ("settings.json", "oauth_creds.json", "google_accounts.json", "GEMINI.md")

    def command(self, settings: PresetSettings) -> list[str]:
        return [
            self.executable,
            "--output-format",
            "json",
            "--approval-mode",
            "auto_edit",
            *_model_args("--model", settings),
            *settings.extra_args,
            "--prompt={prompt}",
        ]

    def environment(
        self, settings: PresetSettings, slot_home: Path, user_env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        home = slot_home / "gemini"
        user_home = self._user_dir(user_env, "")
        _link_user_files(user_home / ".gemini", home / ".gemini", self._user_files)
        return {
            "GEMINI_CLI_HOME": str(home),
            # the worktree was made by orchestrate from the user's own repository
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            "NO_COLOR": "1",
        }

    def parse(self, exit_code: int, output: str, worktree_changed: bool) -> AgentOutcome:
        report: dict[str, Any] | None = None
        for obj in json_objects(output):
            if "session_id" in obj and ("response" in obj or "error" in obj or "stats" in obj):
                report = obj
        if report is None:
            limited = limit_in(output)
            return AgentOutcome(
                False,
                f"gemini gave no result (exit {exit_code}): {_last_error(output)}",
                rate_limited=limited,
                retry_at=limit_reset(output) if limited else None,
            )
        stats = report.get("stats") or {}
        tokens_in = tokens_out = turns = 0
        for model in (stats.get("models") or {}).values():
            tokens = model.get("tokens") or {}
            tokens_in += _int(tokens.get("input", tokens.get("prompt"))) or 0
            tokens_out += _int(tokens.get("candidates")) or 0
            main = (model.get("roles") or {}).get("main") or model.get("api") or {}
            turns += _int(main.get("totalRequests")) or 0
        has_stats = bool(stats.get("models"))
        figures: dict[str, Any] = {
            "session_id": report.get("session_id"),
            "turns": turns if has_stats else None,
            "input_tokens": tokens_in if has_stats else None,
            "output_tokens": tokens_out if has_stats else None,
        }
        error = report.get("error")
        if error:
            message = str(error.get("message") if isinstance(error, dict) else error)
            code = error.get("code") if isinstance(error, dict) else None
            limited = code == 429 or limit_in(message) or ("429" in message and limit_in(output))
            return AgentOutcome(
                False,
                f"gemini reported an error: {_short(message)}",
                rate_limited=limited,
                retry_at=limit_reset(output) if limited else None,
                **figures,
            )
        tools = stats.get("tools") or {}
        done = f"gemini finished, {_int(tools.get('totalSuccess')) or 0} tool calls succeeded"
        if failed := _int(tools.get("totalFail")):
            done += f", {failed} failed"
        if exit_code != 0:
            return AgentOutcome(False, f"{done}, but exit {exit_code}", **figures)
        return self._finish(worktree_changed, done, **figures)


_AIDER_TOKENS = re.compile(
    r"Tokens: (?P<sent>[\d.]+[kM]?) sent(?:, (?P<cw>[\d.]+[kM]?) cache write)?"
    r"(?:, (?P<cr>[\d.]+[kM]?) cache hit)?, (?P<recv>[\d.]+[kM]?) received\."
    r"(?: Cost: \$(?P<msg>[\d.]+) message, \$(?P<session>[\d.]+) session\.)?"
)
_AIDER_FATAL = re.compile(
    r"litellm\.\w+Error\b.*|Unable to reach.*|"
    r"did not conform to the edit format|SearchReplaceNoExactMatch|"
    r"Model .* has hit a token limit",
)


def _aider_count(text: str | None) -> int:
    if not text:
        return 0
    scale = {"k": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return round(float(text.rstrip("kM")) * scale)


class AiderPreset(Preset):
    """Aider with `--message`: one request-edit round, then exit. `--yes-always`
    approves file creation and edits inside the repository; Aider still refuses
    shell commands under it (they need an explicit yes). Aider's own commits are
    off: orchestrate commits the worktree itself, the same way for every agent."""

    name = "aider"
    executable = "aider"
    scratch_patterns = (".aider*",)

    def command(self, settings: PresetSettings) -> list[str]:
        return [
            self.executable,
            *_model_args("--model", settings),
            "--yes-always",
            "--no-auto-commits",
            "--no-dirty-commits",
            "--no-gitignore",
            "--no-check-update",
            "--no-analytics",
            "--no-pretty",
            "--no-fancy-input",
            "--no-show-release-notes",
            "--no-suggest-shell-commands",
            *settings.extra_args,
            "--message={prompt}",
        ]

    def environment(
        self, settings: PresetSettings, slot_home: Path, user_env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        home = slot_home / "aider"
        home.mkdir(parents=True, exist_ok=True)
        return {
            # histories outside the worktree, so they are neither work nor shared
            "AIDER_CHAT_HISTORY_FILE": str(home / "chat-history.md"),
            "AIDER_INPUT_HISTORY_FILE": str(home / "input-history"),
            # the model price table bundled with litellm, not a download at start
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            # unbuffered, so a run killed at its timeout still shows its errors
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }

    def parse(self, exit_code: int, output: str, worktree_changed: bool) -> AgentOutcome:
        sent = received = calls = 0
        session_cost: float | None = None
        for match in _AIDER_TOKENS.finditer(output):
            calls += 1
            sent += (
                _aider_count(match["sent"]) + _aider_count(match["cw"]) + _aider_count(match["cr"])
            )
            received += _aider_count(match["recv"])
            if match["session"]:
                session_cost = float(match["session"])
        applied = sorted(set(re.findall(r"^Applied edit to (.+)$", output, re.MULTILINE)))
        figures: dict[str, Any] = {
            "turns": calls or None,
            "input_tokens": sent if calls else None,
            "output_tokens": received if calls else None,
            "cost_usd": session_cost,
        }
        fatal = _AIDER_FATAL.findall(output)
        limited = limit_in(output) and not applied
        if limited:
            return AgentOutcome(
                False,
                f"aider was rate limited: {_short(fatal[-1]) if fatal else ''}",
                rate_limited=True,
                retry_at=limit_reset(output),
                **figures,
            )
        if not applied:
            why = _short(fatal[-1]) if fatal else _last_lines(output)
            return AgentOutcome(
                False, f"aider applied no edit (exit {exit_code}): {why}", **figures
            )
        done = f"aider applied edits to {', '.join(applied)}"
        if exit_code != 0:
            return AgentOutcome(False, f"{done}, but exit {exit_code}", **figures)
        return self._finish(worktree_changed, done, **figures)


class CursorPreset(Preset):
    """Cursor's `cursor-agent` in print mode, from its public documentation (it
    is not on a package registry, so it is not tested here): `--force` lets it
    write files without confirmation, `--trust` skips the workspace-trust prompt
    that otherwise ends a headless run. JSON output has the result and session
    id; failures print to stderr with no JSON."""

    name = "cursor-agent"
    executable = "cursor-agent"

    def command(self, settings: PresetSettings) -> list[str]:
        return [
            self.executable,
            "--print",
            "--output-format",
            "json",
            "--trust",
            "--force",
            *_model_args("--model", settings),
            *settings.extra_args,
            "{prompt}",
        ]

    def parse(self, exit_code: int, output: str, worktree_changed: bool) -> AgentOutcome:
        result = None
        for obj in json_objects(output):
            if obj.get("type") == "result":
                result = obj
        if result is None:
            limited = limit_in(output)
            return AgentOutcome(
                False,
                f"cursor-agent gave no result (exit {exit_code}): {_last_error(output)}",
                rate_limited=limited,
                retry_at=limit_reset(output) if limited else None,
            )
        usage = result.get("usage") or {}
        figures: dict[str, Any] = {
            "session_id": result.get("session_id"),
            "input_tokens": _int(usage.get("inputTokens", usage.get("input_tokens"))),
            "output_tokens": _int(usage.get("outputTokens", usage.get("output_tokens"))),
        }
        text = str(result.get("result") or "")
        if result.get("is_error") or result.get("subtype") != "success":
            limited = limit_in(text)
            return AgentOutcome(
                False,
                f"cursor-agent reported an error: {_short(text)}",
                rate_limited=limited,
                retry_at=limit_reset(text) if limited else None,
                **figures,
            )
        return self._finish(worktree_changed, "cursor-agent finished", **figures)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (ClaudePreset(), CodexPreset(), GeminiPreset(), AiderPreset(), CursorPreset())
}
