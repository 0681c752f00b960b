"""orchestrate.yaml: loading, validation with key paths, defaults.

Imported by ``orchestrate status``, so it must stay light: no git, no watchdog,
and PyYAML only when the file changed since the cache last saw it.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.cache import Shelf
from protocol.errors import OrchestrateError

CONFIG_NAME = "orchestrate.yaml"
DEFAULT_TARGET = "orchestrate/integration"
PLACEHOLDERS = ("{prompt}", "{prompt_file}", "{task_id}", "{worktree}")
PRESET_NAMES = ("claude", "codex", "gemini", "aider", "cursor-agent")
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ConfigError(OrchestrateError):
    def __init__(self, path: Path, key: str, message: str) -> None:
        self.path = path
        self.key = key
        super().__init__(f"{path.name}: '{key}' {message}")


@dataclass(frozen=True)
class AgentConfig:
    name: str
    command: tuple[str, ...]
    max_instances: int = 1
    timeout_minutes: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    preset: str | None = None
    model: str | None = None
    extra_args: tuple[str, ...] = ()
    fallback_agent: str | None = None
    min_start_interval_seconds: float | None = None


@dataclass(frozen=True)
class MergeConfig:
    target: str = DEFAULT_TARGET
    mode: str = "auto"  # auto | manual


@dataclass(frozen=True)
class Defaults:
    timeout_minutes: float = 30.0
    max_retries: int = 3
    retry_delay_seconds: float = 60.0
    aging_minutes: float = 30.0
    min_start_interval_seconds: float = 0.0
    cooldown_seconds: float = 300.0
    kill_grace_seconds: float = 10.0


@dataclass(frozen=True)
class Limits:
    max_cost_usd: float | None = None
    prompt_budget_bytes: int = 100_000  # under the 128 KiB of one argument, for {prompt}
    log_cap_bytes: int = 50 * 1024 * 1024
    rescan_seconds: float = 2.0


@dataclass(frozen=True)
class Config:
    path: Path
    agents: Mapping[str, AgentConfig]
    merge: MergeConfig = MergeConfig()
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    copy_ignored: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        return self.path.parent

    def slots(self) -> list[tuple[str, str]]:
        """(slot id, agent type) for every agent slot, in a stable order."""
        return [
            (f"{name}-{n}", name)
            for name, agent in sorted(self.agents.items())
            for n in range(1, agent.max_instances + 1)
        ]


def demo_agent_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "orchestrator.demo_agent")


def find_root(start: Path) -> Path:
    """The repository that ``start`` is in; from inside an agent worktree, the main one."""
    here = Path(start).resolve()
    for candidate in (here, *here.parents):
        if candidate.name == "worktrees" and candidate.parent.name == ".orchestrate":
            return candidate.parent.parent
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_NAME).is_file() or (candidate / ".git").exists():
            return candidate
    raise OrchestrateError(f"{here} is not inside a git repository (run 'git init' first)")


def load_config(root: Path) -> Config:
    """The validated configuration of the repository at ``root``.

    The YAML is parsed only when the file changed since the cache last saw it; the
    validation runs every time, so a cached file gives the same answer, or error.
    """
    path = Path(root) / CONFIG_NAME
    try:
        st = os.stat(path)
        with Shelf(root, "config", schema=1) as shelf:
            data = shelf.value(CONFIG_NAME, st, lambda: _read_yaml(path))
    except FileNotFoundError:
        raise OrchestrateError(
            f"no {CONFIG_NAME} in {root} (run 'orchestrate init' in the repository first)"
        ) from None
    return parse_config(path, data)


def _read_yaml(path: Path) -> Any:
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise OrchestrateError(f"{CONFIG_NAME}{where}: not valid YAML: {problem}") from None


def parse_config(path: Path, data: Any) -> Config:
    def err(key: str, message: str) -> ConfigError:
        return ConfigError(path, key, message)

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise err("(top level)", "must be a mapping with 'agents', 'merge', 'defaults'")
    known = {"agents", "merge", "defaults", "limits", "worktrees"}
    for key in data:
        if key not in known:
            raise err(str(key), f"is not a setting (expected one of {', '.join(sorted(known))})")

    agents_raw = data.get("agents")
    if not isinstance(agents_raw, Mapping) or not agents_raw:
        raise err("agents", "must map at least one agent type name to its settings")
    agents: dict[str, AgentConfig] = {}
    for name, raw in agents_raw.items():
        agents[str(name)] = _agent(str(name), raw, err)
    for agent in agents.values():
        if agent.fallback_agent is not None and agent.fallback_agent not in agents:
            raise err(
                f"agents.{agent.name}.fallback_agent",
                f"names '{agent.fallback_agent}', which is not a configured agent type",
            )

    merge_raw = _mapping(data.get("merge"), "merge", err)
    target = merge_raw.get("target", DEFAULT_TARGET)
    if not isinstance(target, str) or not _valid_branch(target):
        raise err("merge.target", f"must be a branch name, not {target!r}")
    mode = merge_raw.get("mode", "auto")
    if mode not in ("auto", "manual"):
        raise err("merge.mode", f"must be 'auto' or 'manual', not {mode!r}")
    _only(merge_raw, "merge", {"target", "mode"}, err)

    defaults_raw = _mapping(data.get("defaults"), "defaults", err)
    base = Defaults()
    _only(defaults_raw, "defaults", set(base.__dataclass_fields__), err)
    defaults = Defaults(
        timeout_minutes=_number(defaults_raw, "defaults", "timeout_minutes", base.timeout_minutes, err),
        max_retries=int(_number(defaults_raw, "defaults", "max_retries", base.max_retries, err, integer=True, zero=True)),
        retry_delay_seconds=_number(defaults_raw, "defaults", "retry_delay_seconds", base.retry_delay_seconds, err, zero=True),
        aging_minutes=_number(defaults_raw, "defaults", "aging_minutes", base.aging_minutes, err),
        min_start_interval_seconds=_number(defaults_raw, "defaults", "min_start_interval_seconds", base.min_start_interval_seconds, err, zero=True),
        cooldown_seconds=_number(defaults_raw, "defaults", "cooldown_seconds", base.cooldown_seconds, err, zero=True),
        kill_grace_seconds=_number(defaults_raw, "defaults", "kill_grace_seconds", base.kill_grace_seconds, err, zero=True),
    )  # fmt: skip

    limits_raw = _mapping(data.get("limits"), "limits", err)
    lbase = Limits()
    _only(limits_raw, "limits", set(lbase.__dataclass_fields__), err)
    max_cost = limits_raw.get("max_cost_usd")
    if max_cost is not None:
        max_cost = _number(limits_raw, "limits", "max_cost_usd", 0.0, err, zero=True)
    limits = Limits(
        max_cost_usd=max_cost,
        prompt_budget_bytes=int(_number(limits_raw, "limits", "prompt_budget_bytes", lbase.prompt_budget_bytes, err, integer=True)),
        log_cap_bytes=int(_number(limits_raw, "limits", "log_cap_bytes", lbase.log_cap_bytes, err, integer=True)),
        rescan_seconds=_number(limits_raw, "limits", "rescan_seconds", lbase.rescan_seconds, err),
    )  # fmt: skip

    worktrees_raw = _mapping(data.get("worktrees"), "worktrees", err)
    _only(worktrees_raw, "worktrees", {"copy_ignored"}, err)
    copy_ignored = _strings(worktrees_raw.get("copy_ignored"), "worktrees.copy_ignored", err)
    for item in copy_ignored:
        if item.startswith("/") or ".." in Path(item).parts:
            raise err("worktrees.copy_ignored", f"'{item}' must be a path inside the repository")
    return Config(path, agents, MergeConfig(target, mode), defaults, limits, tuple(copy_ignored))


def _agent(name: str, raw: Any, err: Any) -> AgentConfig:
    key = f"agents.{name}"
    if not _AGENT_NAME.fullmatch(name):
        raise err(key, "is not a valid agent type name (letters, digits, '-', '_')")
    raw = _mapping(raw, key, err)
    _only(
        raw,
        key,
        {
            "command", "max_instances", "timeout_minutes", "env", "preset", "model",
            "extra_args", "fallback_agent", "min_start_interval_seconds",
        },
        err,
    )  # fmt: skip
    preset = raw.get("preset")
    if preset is None and "command" not in raw and name in PRESET_NAMES:
        preset = name
    if preset is not None and preset not in PRESET_NAMES:
        raise err(f"{key}.preset", f"must be one of {', '.join(PRESET_NAMES)}, not {preset!r}")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise err(f"{key}.model", "must be text")
    extra_args = tuple(_strings(raw.get("extra_args"), f"{key}.extra_args", err))
    command_raw = raw.get("command")
    if command_raw is None:
        if preset is None:
            raise err(
                f"{key}.command",
                "is missing: give the agent's command line as a list, e.g. "
                '["mytool", "--task", "{task_id}"], or a \'preset\'',
            )
        command: tuple[str, ...] = ()
    elif isinstance(command_raw, str):
        try:
            command = tuple(shlex.split(command_raw))
        except ValueError as exc:
            raise err(f"{key}.command", f"cannot be split into arguments: {exc}") from None
    elif isinstance(command_raw, list) and all(isinstance(a, (str, int)) for a in command_raw):
        command = tuple(str(a) for a in command_raw)
    else:
        raise err(f"{key}.command", "must be a list of arguments or one command string")
    if command_raw is not None and not command:
        raise err(f"{key}.command", "is empty")
    if command == ("demo",):
        command = demo_agent_command()
    env_raw = _mapping(raw.get("env"), f"{key}.env", err)
    env: dict[str, str] = {}
    for env_key, value in env_raw.items():
        if not isinstance(env_key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_key):
            raise err(f"{key}.env", f"has an invalid variable name {env_key!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise err(f"{key}.env.{env_key}", "must be text or a number")
        env[env_key] = str(value)
    instances = int(_number(raw, key, "max_instances", 1, err, integer=True))
    timeout = raw.get("timeout_minutes")
    if timeout is not None:
        timeout = _number(raw, key, "timeout_minutes", 0, err)
    interval = raw.get("min_start_interval_seconds")
    if interval is not None:
        interval = _number(raw, key, "min_start_interval_seconds", 0, err, zero=True)
    fallback = raw.get("fallback_agent")
    if fallback is not None and not isinstance(fallback, str):
        raise err(f"{key}.fallback_agent", "must be the name of another agent type")
    return AgentConfig(
        name=name,
        command=command,
        max_instances=instances,
        timeout_minutes=timeout,
        env=env,
        preset=preset,
        model=model,
        extra_args=extra_args,
        fallback_agent=fallback,
        min_start_interval_seconds=interval,
    )


def _mapping(value: Any, key: str, err: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise err(key, "must be a mapping of settings")
    return value


def _only(raw: Mapping[str, Any], key: str, allowed: set[str], err: Any) -> None:
    for sub in raw:
        if sub not in allowed:
            raise err(
                f"{key}.{sub}", f"is not a setting (expected one of {', '.join(sorted(allowed))})"
            )


def _number(
    raw: Mapping[str, Any],
    key: str,
    name: str,
    default: float,
    err: Any,
    *,
    integer: bool = False,
    zero: bool = False,
) -> float:
    value = raw.get(name, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not zero):
        kind = "whole number" if integer else "number"
        bound = "0 or more" if zero else "above 0"
        raise err(f"{key}.{name}", f"must be a {kind} {bound}, not {value!r}")
    return float(value)


def _strings(value: Any, key: str, err: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise err(key, "must be a list of text")
    return list(value)


def _valid_branch(name: str) -> bool:
    return bool(
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", name)
        and ".." not in name
        and not name.endswith((".lock", "/", "."))
        and "//" not in name
    )
