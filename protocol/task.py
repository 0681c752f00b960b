"""The task file: a typed model, parsing, validation and ids."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal, NewType, cast

import yaml

from protocol.errors import TaskValidationError

try:  # the C loader is several times faster on large task trees
    from yaml import CSafeDumper as _Dumper
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

TaskId = NewType("TaskId", str)
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TASK_BYTES = 1024 * 1024
TASK_SUFFIXES = (".yaml", ".yml")

ID_RULE = (
    "an id is 1 to 64 characters of letters, digits, '.', '_' or '-', "
    "starting with a letter or digit, without '..'"
)


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a task id, or None when it can."""
    if not ID_PATTERN.fullmatch(value):
        return f"'{_shorten(value)}' is not a valid task id: {ID_RULE}"
    if ".." in value:
        return f"'{value}' is not a valid task id: it contains '..'"
    if value.endswith(".lock") or value.endswith("."):
        return (
            f"'{value}' is not a valid task id: git refuses branch names ending in '.lock' or '.'"
        )
    return None


def validate_id(value: str, *, source: str = "task id") -> TaskId:
    problem = id_problem(value)
    if problem is not None:
        raise TaskValidationError(problem, source=source, field="id")
    return TaskId(value)


def new_task_id(now: float | None = None) -> TaskId:
    """An id that sorts by submission time and cannot collide between submitters.

    The random tail makes a clash between two processes in the same microsecond
    vanishingly unlikely; the store still refuses to overwrite if it ever happens.
    """
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    return TaskId(f"{stamp:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(3)}")


def utc_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Attempt:
    number: int
    agent_id: str
    agent_type: str
    started_at: str
    ended_at: str | None = None
    exit_code: int | None = None
    outcome: str | None = None  # succeeded | failed | timeout | rate_limited | interrupted
    error: str | None = None
    saved_ref: str | None = None  # where this attempt's commits or uncommitted work are kept


@dataclass
class Assignment:
    agent_id: str
    agent_type: str
    worktree: str
    branch: str
    host: str
    attempt: int
    assigned_at: str
    base_commit: str | None = None
    pid: int | None = None
    started_at: str | None = None
    heartbeat_at: str | None = None


@dataclass
class MergeInfo:
    status: str  # merged | conflict | blocked | no_changes | pending | clean (manual mode)
    target: str
    conflicts: list[str] = field(default_factory=list)
    commit: str | None = None
    message: str | None = None


@dataclass
class Result:
    agent_id: str | None = None
    agent_type: str | None = None
    branch: str | None = None
    base_commit: str | None = None
    commit: str | None = None
    files_changed: list[str] = field(default_factory=list)
    output_file: str | None = None
    log_file: str | None = None
    log_truncated: bool = False
    duration_seconds: float | None = None
    session_id: str | None = None
    turns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    reason: str | None = None
    error: str | None = None
    merge: MergeInfo | None = None


SUBMITTED_FIELDS = (
    "id",
    "description",
    "priority",
    "agent",
    "fallback_agent",
    "depends_on",
    "context_files",
    "timeout_minutes",
    "max_retries",
)
RUNTIME_FIELDS = (
    "submitted_at",
    "not_before",
    "waiting_reason",
    "assignment",
    "attempts",
    "previous_attempts",
    "result",
)
KNOWN_FIELDS = frozenset(SUBMITTED_FIELDS + RUNTIME_FIELDS)


@dataclass
class Task:
    id: TaskId
    description: str
    priority: Priority = "normal"
    agent: str | None = None
    fallback_agent: str | None = None
    depends_on: list[TaskId] = field(default_factory=list)
    context_files: list[str] = field(default_factory=list)
    timeout_minutes: float | None = None
    max_retries: int | None = None
    submitted_at: str | None = None
    not_before: str | None = None
    waiting_reason: str | None = None
    assignment: Assignment | None = None
    attempts: list[Attempt] = field(default_factory=list)
    previous_attempts: list[Attempt] = field(default_factory=list)
    result: Result | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SUBMITTED_FIELDS + RUNTIME_FIELDS:
            value = getattr(self, name)
            if value is None or value == []:
                continue
            if name in ("assignment", "result"):
                value = _drop_none(asdict(value))
            elif name in ("attempts", "previous_attempts"):
                value = [_drop_none(asdict(a)) for a in value]
            elif name == "priority" and value == "normal":
                continue
            out[name] = value
        out.update(self.extra)
        return out

    def dump(self) -> bytes:
        text = yaml.dump(
            self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        )
        return text.encode("utf-8")


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _drop_none(value)
        if value is not None:
            out[key] = value
    return out


@dataclass
class Parsed:
    task: Task
    warnings: list[str]


def parse_task_bytes(data: bytes, *, source: str, default_id: str | None) -> Parsed:
    """Parse and validate one task file's bytes.

    ``source`` names the file in every message; ``default_id`` is the id implied by
    the file name. Raises TaskValidationError naming the line or field at fault.
    """
    if len(data) > MAX_TASK_BYTES:
        raise TaskValidationError(
            f"the file is larger than the limit of {MAX_TASK_BYTES} bytes",
            source=source,
            hint="put long material in a file and name it in context_files",
        )
    if not data.strip():
        raise TaskValidationError(
            "the file is empty", source=source, hint="a task needs at least 'description: ...'"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskValidationError(
            f"the file is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})",
            source=source,
            hint="save the task as UTF-8 YAML",
        ) from None
    if "\x00" in text:
        raise TaskValidationError("the file contains NUL bytes; it is not YAML text", source=source)
    try:
        loaded = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TaskValidationError(
            f"this is not valid YAML: {problem}",
            source=source,
            line=mark.line + 1 if mark is not None else None,
            hint="fix the YAML syntax and submit the file again",
        ) from None
    except RecursionError:
        raise TaskValidationError("the YAML is nested too deeply", source=source) from None
    if not isinstance(loaded, Mapping):
        kind = type(loaded).__name__ if loaded is not None else "nothing"
        raise TaskValidationError(
            f"a task file must be a YAML mapping of fields, but this one holds a {kind}",
            source=source,
            hint="start with 'description: ...'",
        )
    return task_from_mapping(loaded, source=source, default_id=default_id, text=text)


def task_from_mapping(
    data: Mapping[Any, Any], *, source: str, default_id: str | None, text: str | None = None
) -> Parsed:
    def fail(field_name: str, message: str, hint: str | None = None) -> TaskValidationError:
        return TaskValidationError(
            message, source=source, field=field_name, line=_line_of(text, field_name), hint=hint
        )

    warnings: list[str] = []
    for key in data:
        if not isinstance(key, str):
            raise fail(str(key), f"field names must be text, not {type(key).__name__}")

    raw_id = data.get("id", default_id)
    if raw_id is None:
        raise fail("id", "the task has no id", hint="add 'id: some-name'")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise fail("id", f"must be text, not {_type_name(raw_id)}")
    problem = id_problem(str(raw_id))
    if problem is not None:
        raise fail("id", problem)
    task_id = TaskId(str(raw_id))

    description = data.get("description")
    if description is None:
        raise fail(
            "description",
            "the required field 'description' is missing",
            hint="add 'description: what the agent should do'",
        )
    if not isinstance(description, str):
        raise fail("description", f"must be text, not {_type_name(description)}")
    if not description.strip():
        raise fail("description", "is empty; say what the agent should do")

    priority = data.get("priority", "normal")
    if priority not in PRIORITIES:
        raise fail(
            "priority",
            f"'{_shorten(str(priority))}' is not a priority",
            hint="use high, normal or low",
        )

    agent = _optional_name(data, "agent", fail)
    fallback = _optional_name(data, "fallback_agent", fail)

    depends_on: list[TaskId] = []
    for dep in _str_list(data, "depends_on", fail):
        dep_problem = id_problem(dep)
        if dep_problem is not None:
            raise fail("depends_on", dep_problem)
        if dep == task_id:
            raise fail("depends_on", f"the task depends on itself ('{dep}')")
        if dep not in depends_on:
            depends_on.append(TaskId(dep))
    context_files = _str_list(data, "context_files", fail)
    for path in context_files:
        if path.startswith("/") or ".." in path.split("/"):
            raise fail(
                "context_files",
                f"'{_shorten(path)}' must be a path inside the repository, without '..'",
            )

    timeout = data.get("timeout_minutes")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise fail("timeout_minutes", f"must be a positive number, not {_shorten(repr(timeout))}")
    retries = data.get("max_retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise fail(
            "max_retries", f"must be a whole number 0 or more, not {_shorten(repr(retries))}"
        )

    task = Task(
        id=task_id,
        description=description,
        priority=cast(Priority, priority),
        agent=agent,
        fallback_agent=fallback,
        depends_on=depends_on,
        context_files=context_files,
        timeout_minutes=float(timeout) if timeout is not None else None,
        max_retries=retries,
    )
    for name in ("submitted_at", "not_before", "waiting_reason"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise fail(name, f"must be text, not {_type_name(value)}")
            setattr(task, name, value)
    for name in ("submitted_at", "not_before"):
        stamp = getattr(task, name)
        if stamp is not None:
            try:
                parse_iso(stamp)
            except ValueError:
                raise fail(
                    name, f"'{_shorten(stamp)}' is not a time like 2026-01-31T12:00:00.000000Z"
                ) from None
    task.assignment = _record(data, "assignment", Assignment, fail)
    task.result = _record(data, "result", Result, fail)
    task.attempts = _records(data, "attempts", fail)
    task.previous_attempts = _records(data, "previous_attempts", fail)
    for key, value in data.items():
        if key not in KNOWN_FIELDS:
            task.extra[key] = value
            warnings.append(f"{source}: unknown field '{_shorten(key)}' kept as it is")
    return Parsed(task, warnings)


_Fail = Any  # the local ``fail`` factory of task_from_mapping


def _type_name(value: object) -> str:
    return {
        "str": "text",
        "int": "a number",
        "float": "a number",
        "bool": "true/false",
        "list": "a list",
        "dict": "a mapping",
        "NoneType": "empty",
    }.get(type(value).__name__, type(value).__name__)


def _optional_name(data: Mapping[str, Any], name: str, fail: _Fail) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value):
        raise fail(
            name, f"must be the name of a configured agent type, not {_shorten(repr(value))}"
        )
    return value


def _str_list(data: Mapping[str, Any], name: str, fail: _Fail) -> list[str]:
    value = data.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise fail(name, f"must be a list of text, not {_type_name(value)}")
    for item in value:
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise fail(name, f"must be a list of text, but holds {_type_name(item)}")
    return [str(item) for item in value]


def _record(data: Mapping[str, Any], name: str, cls: type[Any], fail: _Fail) -> Any:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise fail(name, f"must be a mapping, not {_type_name(value)}")
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in value.items() if k in known}
    if cls is Result and isinstance(kwargs.get("merge"), Mapping):
        merge = kwargs["merge"]
        kwargs["merge"] = MergeInfo(
            **{k: v for k, v in merge.items() if k in {f.name for f in fields(MergeInfo)}}
        )
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise fail(name, f"is incomplete: {exc}") from None


def _records(data: Mapping[str, Any], name: str, fail: _Fail) -> list[Attempt]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(name, f"must be a list, not {_type_name(value)}")
    return [_record({name: item}, name, Attempt, fail) for item in value]


def _line_of(text: str | None, key: str) -> int | None:
    """The 1-based line of a top-level key, found only when an error is reported."""
    if text is None:
        return None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, _ in node.value:
        if getattr(key_node, "value", None) == key:
            return int(key_node.start_mark.line) + 1
    return None


def id_from_filename(name: str) -> str | None:
    for suffix in TASK_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_ignored_name(name: str) -> bool:
    """Editor leftovers and hidden files that a drop directory must not treat as tasks."""
    return (
        name.startswith(".")
        or name.startswith("#")
        or name.endswith("~")
        or name.endswith(".swp")
        or name.endswith(".swx")
        or name.endswith(".tmp")
        or name.endswith(".part")
    )
