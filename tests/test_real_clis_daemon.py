"""The real agent CLIs through the whole daemon: task file, agent in its worktree,
commit, merge, and a result with tokens and cost, against the mock model APIs.

Each CLI is configured the way a user would configure it: the endpoint, a dummy
key and the CLI's own config directory in the agent's `env:` in orchestrate.yaml,
the model and Aider's model metadata file in `model:` and `extra_args:`. HOME is
an empty directory of the test, and each agent slot gets its own config dir under
.orchestrate/homes/, so nothing reads or writes the user's. Every run is bounded
by the agent's `timeout_minutes`: the daemon's own timeout is what ends a CLI
that retries a dead server for minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import load_config
from orchestrator.daemon import Daemon
from orchestrator.presets import PRESETS
from tests.helpers import add_task, configure, git, load, make_repo, run_until_idle
from tests.mockapi import (
    AnthropicMock,
    ChatMock,
    Faults,
    GeminiMock,
    MockServer,
    ResponsesMock,
    Script,
)
from tests.test_real_clis import AGENT_BIN, PROMPT, write_model_metadata

TARGET = "orchestrate/integration"
# minutes: generous for a loaded CI machine (a healthy run takes 1-20 s), and the
# bound on a test that goes wrong
RUN_TIMEOUT = 2.0
# a dead API: stop the CLI after 6 s, well before its own retries give up
DEAD_TIMEOUT = 0.1
# Aider retries 429s for over a minute; the daemon's timeout stops it, and the
# limit it printed still defers the task
AIDER_LIMIT_TIMEOUT = 0.25

MOCKS: dict[str, type[MockServer]] = {
    "claude": AnthropicMock,
    "codex": ResponsesMock,
    "gemini": GeminiMock,
    "aider": ChatMock,
}
CLIS = sorted(MOCKS)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def _require(name: str) -> None:
    path = shutil.which(PRESETS[name].executable, path=os.pathsep.join(map(str, AGENT_BIN)))
    if path is None:
        pytest.skip(f"{name} CLI not installed in agents/; run: bash agents/install.sh")


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The daemon's environment: an empty HOME, the CLIs on PATH, none of the
    caller's keys or config dirs; agents inherit it."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    for var in list(os.environ):
        if var.startswith(("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_", "CLAUDE_", "CODEX_")):
            monkeypatch.delenv(var)
        if var.startswith(("AIDER_", "LITELLM_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setenv("PATH", os.pathsep.join([*map(str, AGENT_BIN), os.environ["PATH"]]))
    return tmp_path


def agent_settings(name: str, url: str, config: Path, timeout: float) -> dict[str, Any]:
    """What a user writes in orchestrate.yaml (and keeps in `config`) for this CLI
    to reach a model API at `url`."""
    agent: dict[str, Any] = {"preset": name, "timeout_minutes": timeout}
    if name == "claude":
        agent["env"] = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test-dummy"}
    elif name == "codex":
        # the user's own Codex config dir; each slot links its config.toml
        codex_home = config / "codex"
        codex_home.mkdir(parents=True)
        (codex_home / "config.toml").write_text(
            'model = "mock-model"\nmodel_provider = "mock"\n'
            "[model_providers.mock]\n"
            f'name = "mock"\nbase_url = "{url}/v1"\nwire_api = "responses"\n'
            'env_key = "OPENAI_API_KEY"\n'
            "request_max_retries = 3\nstream_max_retries = 1\n"
        )
        agent["env"] = {"CODEX_HOME": str(codex_home), "OPENAI_API_KEY": "sk-test-dummy"}
    elif name == "gemini":
        gemini_home = config / "gemini"
        settings = gemini_home / ".gemini" / "settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
        agent["env"] = {
            "GEMINI_CLI_HOME": str(gemini_home),
            "GOOGLE_GEMINI_BASE_URL": url,
            "GEMINI_API_KEY": "test-dummy",
        }
    elif name == "aider":
        metadata = write_model_metadata(config / "model-metadata.json")
        agent["model"] = "openai/mock-model"
        agent["extra_args"] = ["--model-metadata-file", str(metadata)]
        agent["env"] = {"OPENAI_API_BASE": f"{url}/v1", "OPENAI_API_KEY": "sk-test-dummy"}
    return agent


def setup_repo(name: str, base: Path, url: str, timeout: float = RUN_TIMEOUT) -> Path:
    _require(name)
    repo = make_repo(base / "repo")
    configure(repo, {name: agent_settings(name, url, base / "cli-config", timeout)})
    add_task(repo, "hello", PROMPT)
    return repo


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _explain(repo: Path) -> str:
    logs = sorted((repo / ".orchestrate" / "logs").glob("hello.*.log"))
    tail = logs[-1].read_text(errors="replace")[-3000:] if logs else "(no agent log)"
    events = (repo / ".orchestrate" / "events.jsonl").read_text()[-3000:]
    return f"--- events ---\n{events}\n--- agent log tail ---\n{tail}"


@pytest.mark.parametrize("name", CLIS)
def test_task_runs_through_the_daemon_and_merges(name: str, user: Path) -> None:
    script = Script()
    with MOCKS[name](script=script) as mock:
        repo = setup_repo(name, user, mock.url)
        run_until_idle(repo)
    state, task = load(repo, "hello")
    assert state == "completed", _explain(repo)
    result = task["result"]
    assert result["merge"]["status"] == "merged", result
    assert git(repo, "show", f"{TARGET}:{script.path}") + "\n" == script.final_content
    assert result["files_changed"] == [script.path]  # Aider's caches are not work
    assert not (repo / script.path).exists()  # the user's checkout is untouched
    assert task["attempts"][0]["outcome"] == "succeeded"
    assert result["input_tokens"] > 0 and result["output_tokens"] > 0, result
    if name in ("claude", "aider"):
        # the CLIs that price a run: Claude Code itself, Aider from the model metadata
        assert result["cost_usd"] > 0, result
    if name in ("claude", "codex", "gemini"):
        assert result["session_id"], result
        assert result["turns"] and result["turns"] >= 1, result
    # the slot's own config dir, with the user's files linked in
    slot = repo / ".orchestrate" / "homes" / f"{name}-1"
    if name == "codex":
        assert (slot / "codex" / "config.toml").is_symlink()
    if name == "gemini":
        assert (slot / "gemini" / ".gemini" / "settings.json").is_symlink()
    # HOME is left alone, but for Aider's analytics and install ids in ~/.aider
    in_home = sorted(p.name for p in (user / "home").iterdir())
    assert in_home == ([".aider"] if name == "aider" else []), in_home


@pytest.mark.parametrize("name", CLIS)
def test_api_errors_then_recovery_complete_the_task(name: str, user: Path) -> None:
    script = Script()
    with MOCKS[name](script=script, faults=Faults(fail_500_times=2)) as mock:
        repo = setup_repo(name, user, mock.url)
        run_until_idle(repo)
        statuses = [r.status for r in mock.requests]
    assert statuses.count(500) == 2, statuses
    state, task = load(repo, "hello")
    assert state == "completed", _explain(repo)
    assert task["result"]["merge"]["status"] == "merged"
    assert len(task["attempts"]) == 1  # the CLI retried by itself, within one attempt
    assert git(repo, "show", f"{TARGET}:{script.path}") + "\n" == script.final_content


@pytest.mark.parametrize("name", CLIS)
def test_rate_limit_defers_the_task_and_cools_the_agent(name: str, user: Path) -> None:
    timeout = AIDER_LIMIT_TIMEOUT if name == "aider" else RUN_TIMEOUT
    with MOCKS[name](faults=Faults(rate_limit=True, reset_after_s=3600)) as mock:
        repo = setup_repo(name, user, mock.url, timeout)
        daemon = Daemon(repo, load_config(repo), echo=None, install_signals=False)
        daemon.open()
        try:
            deadline = time.monotonic() + timeout * 60 + 30
            while True:
                daemon.tick(time.time())
                state, task = load(repo, "hello")
                if task.get("attempts") and task["attempts"][-1].get("ended_at"):
                    break
                assert time.monotonic() < deadline, _explain(repo)
                daemon.wake.wait(0.1)
                daemon.wake.clear()
            assert not daemon.runs
            cooling_until = daemon.agents[name].cooling_until
            assert cooling_until is not None and cooling_until > time.time() + 60, cooling_until
        finally:
            daemon.close()
        statuses = [r.status for r in mock.requests]
    assert 429 in statuses, statuses
    state, task = load(repo, "hello")
    assert state == "pending", _explain(repo)
    assert task["not_before"]
    assert "hit a usage limit" in task["waiting_reason"]
    assert [a["outcome"] for a in task["attempts"]] == ["rate_limited"], task["attempts"]
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "-C", str(repo), "status", "--json"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    assert name in status["cooling"], status


@pytest.mark.parametrize("name", CLIS)
def test_unreachable_api_is_stopped_at_the_timeout(name: str, user: Path) -> None:
    repo = setup_repo(name, user, _dead_url(), DEAD_TIMEOUT)
    started = time.monotonic()
    run_until_idle(repo)
    assert time.monotonic() - started < DEAD_TIMEOUT * 60 + 30
    state, task = load(repo, "hello")
    assert state == "failed", _explain(repo)
    attempt = task["attempts"][0]
    assert attempt["outcome"] == "timeout", attempt
    assert attempt["error"].startswith(f"timed out after {DEAD_TIMEOUT:g} minutes ("), attempt
    assert "timed out after" in task["result"]["error"]
    assert not task["result"].get("merge")


NO_WORK_REASON = {
    "claude": "but no files changed in the worktree",
    "codex": "but no files changed in the worktree",
    "gemini": "but no files changed in the worktree",
    "aider": "aider applied no edit (exit 0)",
}


@pytest.mark.parametrize("name", CLIS)
def test_exit_zero_without_the_work_is_not_a_success(name: str, user: Path) -> None:
    with MOCKS[name](faults=Faults(no_work=True)) as mock:
        repo = setup_repo(name, user, mock.url)
        run_until_idle(repo)
    state, task = load(repo, "hello")
    assert state == "failed", _explain(repo)
    attempt = task["attempts"][0]
    assert (attempt["outcome"], attempt["exit_code"]) == ("failed", 0), attempt
    assert NO_WORK_REASON[name] in attempt["error"], attempt
    assert NO_WORK_REASON[name] in task["result"]["error"]
    assert git(repo, "rev-parse", TARGET) == git(repo, "rev-parse", "main")
