"""The real agent CLIs, run by their presets against our mock model APIs.

Each CLI runs as a subprocess in a temporary git repository, with its own HOME
and per-slot config directory, a dummy key and stdin closed, exactly the argv
and environment its preset gives. The binaries come from `agents/install.sh`;
a CLI that is not installed is skipped with the command that installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.presets import PRESETS, AgentOutcome, PresetSettings
from tests.mockapi import (
    AnthropicMock,
    ChatMock,
    Faults,
    GeminiMock,
    MockServer,
    ResponsesMock,
    Script,
)

ROOT = Path(__file__).resolve().parent.parent
AGENT_BIN = (ROOT / "agents" / "node_modules" / ".bin", ROOT / "agents" / "aider-venv" / "bin")
PROMPT = "Create hello.txt with a greeting, then mark it as edited."
# generous for a loaded 2-core CI machine; a healthy run takes 1-5 s
RUN_TIMEOUT = 120.0
DEAD_TIMEOUT = 12.0

pytestmark = pytest.mark.slow


@dataclass
class Run:
    outcome: AgentOutcome
    output: str
    exit_code: int
    killed: bool
    seconds: float
    repo: Path


def _binary(name: str) -> str:
    path = shutil.which(PRESETS[name].executable, path=os.pathsep.join(map(str, AGENT_BIN)))
    if path is None:
        pytest.skip(f"{name} CLI not installed; run: bash agents/install.sh")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _git(repo: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(repo),
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    }
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout


def _make_repo(tmp: Path, scratch: tuple[str, ...]) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# scratch project\n")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-q", "-m", "initial")
    # what orchestrate does for a preset's scratch files: keep them out of status
    with (repo / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.writelines(f"{pattern}\n" for pattern in scratch)
    return repo


def _mock_env(name: str, url: str, slot: Path) -> dict[str, str]:
    """What a user's environment or config would hold to reach this API."""
    if name == "claude":
        return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test-dummy"}
    if name == "codex":
        home = slot / "codex"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            'model = "mock-model"\nmodel_provider = "mock"\n'
            "[model_providers.mock]\n"
            f'name = "mock"\nbase_url = "{url}/v1"\nwire_api = "responses"\n'
            'env_key = "OPENAI_API_KEY"\n'
            "request_max_retries = 3\nstream_max_retries = 1\n"
        )
        return {"OPENAI_API_KEY": "sk-test-dummy"}
    if name == "gemini":
        settings = slot / "gemini" / ".gemini" / "settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
        return {"GOOGLE_GEMINI_BASE_URL": url, "GEMINI_API_KEY": "test-dummy"}
    if name == "aider":
        return {"OPENAI_API_BASE": f"{url}/v1", "OPENAI_API_KEY": "sk-test-dummy"}
    raise AssertionError(name)


def write_model_metadata(path: Path) -> Path:
    """litellm does not know the mock model: its window and prices, for Aider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "openai/mock-model": {
            "max_input_tokens": 128000,
            "max_output_tokens": 4096,
            "litellm_provider": "openai",
            "mode": "chat",
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 2e-06,
        }
    }
    path.write_text(json.dumps(metadata))
    return path


def _settings(name: str, tmp: Path) -> PresetSettings:
    if name != "aider":
        return PresetSettings()
    metadata = write_model_metadata(tmp / "model-metadata.json")
    return PresetSettings(
        model="openai/mock-model", extra_args=("--model-metadata-file", str(metadata))
    )


def _argv(template: list[str], repo: Path) -> list[str]:
    values = {
        "{prompt}": PROMPT,
        "{worktree}": str(repo),
        "{task_id}": "hello",
        "{prompt_file}": str(repo.parent / "prompt.md"),
    }
    argv = []
    for arg in template:
        for key, value in values.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    return argv


def run_cli(name: str, tmp: Path, url: str, timeout: float) -> Run:
    binary = _binary(name)
    preset = PRESETS[name]
    repo = _make_repo(tmp, preset.scratch_patterns)
    home, slot, tmpdir = tmp / "home", tmp / "slot", tmp / "tmp"
    for d in (home, slot, tmpdir):
        d.mkdir(exist_ok=True)
    (repo.parent / "prompt.md").write_text(PROMPT)
    settings = _settings(name, tmp)
    env = {
        "PATH": os.pathsep.join([str(Path(binary).parent), os.environ["PATH"]]),
        "HOME": str(home),
        "TMPDIR": str(tmpdir),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    env.update(_mock_env(name, url, slot))
    env.update(preset.environment(settings, slot))
    argv = _argv(preset.command(settings), repo)
    argv[0] = binary
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    killed = False
    try:
        raw, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        killed = True
        os.killpg(proc.pid, signal.SIGKILL)
        raw, _ = proc.communicate(timeout=30)
    finally:
        # whatever the CLI left in its group goes too (ESRCH: nothing left)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    seconds = time.monotonic() - started
    output = raw.decode("utf-8", "replace")
    changed = bool(_git(repo, "status", "--porcelain").strip())
    outcome = preset.parse(proc.returncode, output, changed)
    return Run(outcome, output, proc.returncode, killed, seconds, repo)


MOCKS: dict[str, type[MockServer]] = {
    "claude": AnthropicMock,
    "codex": ResponsesMock,
    "gemini": GeminiMock,
    "aider": ChatMock,
}
CLIS = sorted(MOCKS)


def _explain(run: Run) -> str:
    return f"{run.outcome}\nexit {run.exit_code}, killed {run.killed}\n--- output tail ---\n{run.output[-4000:]}"


@pytest.mark.parametrize("name", CLIS)
def test_cli_creates_and_edits_file(name: str, tmp_path: Path) -> None:
    script = Script()
    with MOCKS[name](script=script) as mock:
        run = run_cli(name, tmp_path, mock.url, RUN_TIMEOUT)
    assert (run.repo / script.path).read_text() == script.final_content, _explain(run)
    assert run.outcome.success, _explain(run)
    assert run.outcome.input_tokens and run.outcome.input_tokens > 0, _explain(run)
    assert run.outcome.output_tokens and run.outcome.output_tokens > 0, _explain(run)
    if name in ("claude", "codex", "gemini"):
        assert run.outcome.session_id, _explain(run)
    if name in ("claude", "aider"):
        # the CLIs that price their runs: Claude Code itself, Aider from the model metadata
        assert run.outcome.cost_usd and run.outcome.cost_usd > 0, _explain(run)


@pytest.mark.parametrize("name", CLIS)
def test_cli_recovers_from_server_errors(name: str, tmp_path: Path) -> None:
    script = Script()
    with MOCKS[name](script=script, faults=Faults(fail_500_times=2)) as mock:
        run = run_cli(name, tmp_path, mock.url, RUN_TIMEOUT)
        statuses = [r.status for r in mock.requests]
    assert statuses.count(500) == 2, statuses
    assert run.outcome.success, _explain(run)
    assert (run.repo / script.path).read_text() == script.final_content


@pytest.mark.parametrize("name", CLIS)
def test_cli_rate_limit_is_reported(name: str, tmp_path: Path) -> None:
    # Aider retries 429s for over a minute; its printed errors are enough, so it
    # is stopped early the way the daemon's timeout would stop it
    timeout = 20.0 if name == "aider" else RUN_TIMEOUT
    with MOCKS[name](faults=Faults(rate_limit=True, reset_after_s=3600)) as mock:
        run = run_cli(name, tmp_path, mock.url, timeout)
    assert not run.outcome.success, _explain(run)
    assert run.outcome.rate_limited, _explain(run)
    assert not (run.repo / "hello.txt").exists()
    if run.outcome.retry_at is not None:
        # every CLI that repeats the reset time gives about an hour from now
        assert time.time() + 60 < run.outcome.retry_at < time.time() + 2 * 86400, _explain(run)
    if name in ("codex", "gemini", "aider"):
        assert run.outcome.retry_at is not None, _explain(run)


@pytest.mark.parametrize("name", CLIS)
def test_cli_unreachable_api_is_stopped_by_timeout(name: str, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    run = run_cli(name, tmp_path, url, DEAD_TIMEOUT)
    assert run.seconds < DEAD_TIMEOUT + 15, _explain(run)
    assert not run.outcome.success, _explain(run)
    assert not run.outcome.rate_limited, _explain(run)


@pytest.mark.parametrize("name", CLIS)
def test_cli_that_does_no_work_is_not_a_success(name: str, tmp_path: Path) -> None:
    with MOCKS[name](faults=Faults(no_work=True)) as mock:
        run = run_cli(name, tmp_path, mock.url, RUN_TIMEOUT)
    assert run.exit_code == 0, _explain(run)
    assert not run.outcome.success, _explain(run)
    assert not run.outcome.rate_limited, _explain(run)
