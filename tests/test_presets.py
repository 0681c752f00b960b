"""Preset parsers on output captured from the real CLIs, and their argv and environment.

The files in fixtures/agent_output/ were captured by running each real CLI
(Claude Code 2.1.330, Codex 0.169.0, Gemini CLI 0.61.0, Aider 0.86.2) against
the mocks in tests/mockapi, as tests/test_real_clis.py does, with the temp
paths replaced.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from orchestrator.config import AgentConfig
from orchestrator.limits import limit_reset
from orchestrator.presets import (
    PRESETS,
    AgentOutcome,
    PresetSettings,
    generic_outcome,
    json_objects,
)
from orchestrator.runner import build_invocation

FIXTURES = Path(__file__).parent / "fixtures" / "agent_output"


def _parse(name: str, case: str, exit_code: int, changed: bool) -> AgentOutcome:
    output = (FIXTURES / f"{name}_{case}.txt").read_text()
    return PRESETS[name].parse(exit_code, output, changed)


@pytest.mark.parametrize("name", ["claude", "codex", "gemini", "aider"])
@pytest.mark.parametrize("case", ["ok", "fail500"])
def test_finished_run_that_changed_files_is_a_success(name: str, case: str) -> None:
    outcome = _parse(name, case, 0, True)
    assert outcome.success, outcome.reason
    assert outcome.input_tokens and outcome.input_tokens > 0
    assert outcome.output_tokens and outcome.output_tokens > 0
    assert not outcome.rate_limited


def test_claude_figures() -> None:
    outcome = _parse("claude", "ok", 0, True)
    assert outcome.success
    assert outcome.reason == "claude finished in 3 turns"
    assert (outcome.turns, outcome.input_tokens, outcome.output_tokens) == (3, 3600, 1035)
    assert outcome.cost_usd == pytest.approx(0.0351)
    assert outcome.session_id and len(outcome.session_id) == 36


def test_codex_figures() -> None:
    outcome = _parse("codex", "ok", 0, True)
    assert (outcome.turns, outcome.input_tokens, outcome.output_tokens) == (1, 3600, 1035)
    assert outcome.cost_usd is None
    assert outcome.reason == "codex finished, 2 file changes"


def test_gemini_figures_count_the_router_calls_too() -> None:
    outcome = _parse("gemini", "ok", 0, True)
    # 3 agent turns + 1 routing call, each 1200 in / 345 out at the mock
    assert (outcome.input_tokens, outcome.output_tokens) == (4800, 1380)
    assert outcome.turns == 3
    assert outcome.reason == "gemini finished, 2 tool calls succeeded"


def test_aider_figures() -> None:
    outcome = _parse("aider", "ok", 0, True)
    assert outcome.success
    assert outcome.reason == "aider applied edits to hello.txt"
    assert outcome.cost_usd == pytest.approx(0.00083)
    assert outcome.turns == 1


@pytest.mark.parametrize("name", ["claude", "codex", "gemini", "aider"])
def test_exit_0_without_changes_is_not_a_success(name: str) -> None:
    outcome = _parse(name, "nowork", 0, False)
    assert not outcome.success
    assert not outcome.rate_limited
    if name != "aider":
        assert outcome.reason.endswith("but no files changed in the worktree"), outcome.reason


def test_aider_exit_0_without_edits_says_so() -> None:
    outcome = _parse("aider", "nowork", 0, False)
    assert outcome.reason.startswith("aider applied no edit (exit 0)")


@pytest.mark.parametrize(
    ("name", "exit_code"), [("claude", 1), ("codex", 1), ("gemini", 1), ("aider", -9)]
)
def test_rate_limit_is_recognised(name: str, exit_code: int) -> None:
    outcome = _parse(name, "ratelimit", exit_code, False)
    assert outcome.rate_limited, outcome.reason
    assert not outcome.success


def test_rate_limit_reset_times() -> None:
    # Gemini and Aider repeat the API's "retry in 3600s": relative to parse time
    for name, code in (("gemini", 1), ("aider", -9)):
        outcome = _parse(name, "ratelimit", code, False)
        assert outcome.retry_at is not None
        assert abs(outcome.retry_at - (dt.datetime.now().timestamp() + 3600)) < 60
    # Codex gives a wall-clock time: the next such time, within a day
    outcome = _parse("codex", "ratelimit", 1, False)
    assert outcome.retry_at is not None
    assert 0 < outcome.retry_at - dt.datetime.now().timestamp() <= 86400


@pytest.mark.parametrize("name", ["claude", "codex", "gemini", "aider"])
def test_killed_at_timeout_against_dead_api(name: str) -> None:
    outcome = _parse(name, "unreachable", -9, False)
    assert not outcome.success
    assert not outcome.rate_limited
    assert outcome.reason


def test_unreachable_reasons_name_the_error() -> None:
    claude = _parse("claude", "unreachable", -9, False).reason
    assert claude.startswith("claude gave no result (exit -9) after"), claude
    assert claude.endswith("last: unknown (no HTTP response)"), claude
    assert "Connection failed" in _parse("codex", "unreachable", -9, False).reason
    assert "fetch failed" in _parse("gemini", "unreachable", -9, False).reason
    assert "Connection error" in _parse("aider", "unreachable", -9, False).reason


def _claude_result(**fields: object) -> str:
    base: dict[str, object] = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 2,
        "session_id": "abc",
        "total_cost_usd": 0.5,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 100,
            "output_tokens": 7,
        },
        "permission_denials": [],
        "result": "done",
    }
    base.update(fields)
    return json.dumps(base) + "\n"


def test_claude_is_error_with_exit_0_is_a_failure() -> None:
    outcome = PRESETS["claude"].parse(
        0, _claude_result(is_error=True, result="API Error: 500 boom"), True
    )
    assert not outcome.success
    assert outcome.reason == "claude reported success, is_error: API Error: 500 boom"
    assert outcome.input_tokens == 115
    assert outcome.cost_usd == 0.5


def test_claude_permission_denials_are_reported() -> None:
    denial = {"tool_name": "Bash", "tool_use_id": "t1", "tool_input": {"command": "make"}}
    output = _claude_result(permission_denials=[denial])
    unchanged = PRESETS["claude"].parse(0, output, False)
    assert not unchanged.success
    assert unchanged.reason == (
        "claude finished in 2 turns; permission denied 1 times (Bash), "
        "but no files changed in the worktree"
    )
    assert PRESETS["claude"].parse(0, output, True).success


def test_claude_subscription_limit_messages() -> None:
    old = _claude_result(is_error=True, result="Claude AI usage limit reached|1750708800")
    outcome = PRESETS["claude"].parse(1, old, False)
    assert outcome.rate_limited
    assert outcome.retry_at == 1750708800.0
    new = _claude_result(is_error=True, result="You've hit your limit · resets 3pm (Asia/Tokyo)")
    outcome = PRESETS["claude"].parse(1, new, False)
    assert outcome.rate_limited
    assert outcome.retry_at is not None
    at = dt.datetime.fromtimestamp(outcome.retry_at, ZoneInfo("Asia/Tokyo"))
    assert (at.hour, at.minute) == (15, 0)


def test_limit_reset_forms() -> None:
    now = dt.datetime(2025, 6, 1, 10, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
    assert (
        limit_reset("5-hour limit reached ∙ resets 3pm (America/New_York)", now) == now + 5 * 3600
    )
    assert limit_reset("resets 9am (America/New_York)", now) == now + 23 * 3600
    assert limit_reset("Please try again in 1m30s.", now) == now + 90
    assert limit_reset("Please retry in 20.5s", now) == now + 20.5
    assert limit_reset("try again in 2 hours 5 minutes", now) == now + 7500
    assert limit_reset("rate limited, no time given", now) is None


def test_limit_reset_on_another_day_as_codex_words_it() -> None:
    """Codex names the date when the reset is not today ('Nov 22nd, 2026 12:07 AM'):
    a limit hit an hour before midnight was once read as having no reset time."""

    def local(*parts: int) -> float:
        return dt.datetime(*parts).astimezone().timestamp()  # type: ignore[arg-type]

    now = local(2026, 11, 21, 23, 7)
    codex = "You've hit your usage limit. ... or try again at Nov 22nd, 2026 12:07 AM."
    assert limit_reset(codex, now) == local(2026, 11, 22, 0, 7)
    assert limit_reset("try again at Nov 22, 12:07 AM", now) == local(2026, 11, 22, 0, 7)
    new_year = local(2026, 12, 31, 23, 30)
    assert limit_reset("try again at Jan 1st, 2027 12:30 AM.", new_year) == local(2027, 1, 1, 0, 30)
    assert limit_reset("try again at Jan 1st 12:30 AM.", new_year) == local(2027, 1, 1, 0, 30)


def test_model_text_about_rate_limits_does_not_count_when_claude_succeeds() -> None:
    output = _claude_result(result="I added a 429 rate limit error handler.")
    outcome = PRESETS["claude"].parse(0, output, True)
    assert outcome.success
    assert not outcome.rate_limited


def test_json_objects_finds_pretty_printed_and_jsonl() -> None:
    text = 'log line {not json}\n{"a": 1}\n{\n  "b": {"c": 2}\n}\ntrailing'
    assert list(json_objects(text)) == [{"a": 1}, {"b": {"c": 2}}]


def test_generic_outcome() -> None:
    assert generic_outcome(0, True) == AgentOutcome(True, "exit 0")
    assert generic_outcome(0, False) == AgentOutcome(True, "exit 0 (no files changed)")
    assert generic_outcome(3, True) == AgentOutcome(False, "exit 3")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_prompt_is_one_element_after_the_options(name: str) -> None:
    settings = PresetSettings(model="m1", extra_args=("--extra", "x"))
    argv = PRESETS[name].command(settings)
    assert argv[0] == PRESETS[name].executable
    prompt_at = [i for i, a in enumerate(argv) if "{prompt}" in a]
    assert len(prompt_at) == 1
    assert prompt_at[0] == len(argv) - 1
    assert argv.index("--extra") < prompt_at[0]
    assert "m1" in argv
    assert argv[-1] == "{prompt}" or argv[-1].endswith("={prompt}")


def test_claude_prompt_after_double_dash() -> None:
    argv = PRESETS["claude"].command(PresetSettings())
    assert argv[-2:] == ["--", "{prompt}"]
    assert "--dangerously-skip-permissions" not in argv
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"


def test_per_slot_config_dirs_link_the_users_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text("{}")
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text("{}")
    monkeypatch.setenv("HOME", str(home))
    for var in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_CLI_HOME"):
        monkeypatch.delenv(var, raising=False)
    slot = tmp_path / "slot1"
    env = PRESETS["claude"].environment(PresetSettings(), slot)
    assert env["CLAUDE_CONFIG_DIR"] == str(slot / "claude")
    assert (slot / "claude" / ".credentials.json").resolve() == (
        home / ".claude" / ".credentials.json"
    )
    assert env["DISABLE_AUTOUPDATER"] == "1"
    env = PRESETS["codex"].environment(PresetSettings(), slot)
    assert env["CODEX_HOME"] == str(slot / "codex")
    assert (slot / "codex" / "auth.json").is_symlink()
    # a slot's own file wins over the user's
    env = PRESETS["gemini"].environment(PresetSettings(), slot)
    assert env["GEMINI_CLI_HOME"] == str(slot / "gemini")
    assert (
        PRESETS["aider"]
        .environment(PresetSettings(), slot)["AIDER_CHAT_HISTORY_FILE"]
        .startswith(str(slot))
    )


def test_is_sandbox_only_for_an_explicit_bypass_as_root(tmp_path: Path) -> None:
    plain = PRESETS["claude"].environment(PresetSettings(), tmp_path)
    assert "IS_SANDBOX" not in plain
    bypass = PRESETS["claude"].environment(
        PresetSettings(extra_args=("--dangerously-skip-permissions",)), tmp_path
    )
    assert ("IS_SANDBOX" in bypass) == (os.geteuid() == 0)


def test_config_dir_in_agent_env_is_linked_into_each_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a user points CODEX_HOME (in the agent's env:) at a config kept for
    # orchestrate; each slot still gets its own dir, with the files linked from it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = tmp_path / "repo"
    (root / "cli" / "codex").mkdir(parents=True)
    (root / "cli" / "codex" / "config.toml").write_text('model = "m"\n')
    agent = AgentConfig(
        name="codex",
        command=(),
        preset="codex",
        env={"CODEX_HOME": "cli/codex", "OPENAI_API_KEY": "k"},
    )
    envs = [
        build_invocation(
            agent, slot=slot, task_id="t", prompt="p", prompt_file=root / "p.md",
            worktree=root, root=root,
        ).env
        for slot in ("codex-1", "codex-2")
    ]  # fmt: skip
    for slot, env in zip(("codex-1", "codex-2"), envs, strict=True):
        home = root / ".orchestrate" / "homes" / slot / "codex"
        assert env["CODEX_HOME"] == str(home)
        assert (home / "config.toml").resolve() == root / "cli" / "codex" / "config.toml"
        assert env["OPENAI_API_KEY"] == "k"


def test_claude_429_it_got_past_is_not_a_limit() -> None:
    from orchestrator.presets import PRESETS

    events = [
        {"type": "system", "subtype": "api_retry", "error": "rate_limit", "error_status": 429},
        {"type": "system", "subtype": "api_retry", "error": "overloaded", "error_status": 529},
    ]
    output = "\n".join(json.dumps(e) for e in events)
    outcome = PRESETS["claude"].parse(-15, output, False)
    assert not outcome.rate_limited
    assert "after 2 API retries, last: overloaded (status 529)" in outcome.reason
    limited = PRESETS["claude"].parse(-15, "\n".join(json.dumps(e) for e in events[::-1]), False)
    assert limited.rate_limited
