"""The task file: a typed model, parsing, validation and ids."""

from __future__ import annotations

import math
import re
import reprlib
import time
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal, NewType, cast

from protocol.errors import TaskValidationError

if TYPE_CHECKING:
    import yaml


def _represent_str(dumper: yaml.representer.SafeRepresenter, value: str) -> yaml.Node:
    if (
        "\n" in value
        and not any(c in value for c in "\r\t\x85\u2028\u2029")
        and value == value.rstrip(" ")
    ):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


# PyYAML is imported on first use, not with this module: it costs 10 ms at start-up,
# which ``status`` and ``tasks`` skip when the listing cache (orchestrator/cache.py)
# has what they need. Its C loader and dumper, where PyYAML was built with libyaml,
# are several times faster on large task trees.


@cache
def _loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _dumper() -> Any:
    import yaml

    class TaskDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
        """Writes multi-line text (descriptions, errors) as readable ``|`` blocks."""

    TaskDumper.add_representer(str, _represent_str)
    return TaskDumper


TaskId = NewType("TaskId", str)
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TASK_BYTES = 1024 * 1024
TASK_SUFFIXES = (".yaml", ".yml")

ID_RULE = (
    "an id is 1 to 64 ASCII letters, digits, '.', '_' or '-', starts with a letter or digit, "
    "and has no '..'"
)
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("._-")


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a task id (it becomes a file and a branch name), or None."""
    if ID_PATTERN.fullmatch(value) and ".." not in value and not value.endswith((".", ".lock")):
        return None
    if not value:
        return f"it is empty; {ID_RULE}"
    if len(value) > 64:
        return f"it is {len(value)} characters long; {ID_RULE}"
    bad = next((c for c in value if c not in _ID_CHARS), None)
    if bad is not None:
        return f"it contains {bad!r} (U+{ord(bad):04X}); {ID_RULE}"
    if value[0] not in _ID_FIRST:
        return f"it starts with {value[0]!r}; {ID_RULE}"
    if ".." in value:
        return f"it contains '..'; {ID_RULE}"
    return "it ends in '.' or '.lock', which git refuses in a branch name"


def validate_id(value: str) -> TaskId:
    """``value`` as a TaskId, or TaskValidationError saying why it cannot be one."""
    problem = id_problem(value) if isinstance(value, str) else "it is not text"
    if problem is not None:
        raise TaskValidationError(
            f"'{_shorten(str(value))}' is not a valid task id: {problem}",
            source="",
            hint="for example add-auth",
        )
    return TaskId(value)


def new_task_id(now: float | None = None) -> TaskId:
    """An id that sorts by submission time and cannot collide between submitters.

    The random tail makes a clash between two processes in the same microsecond
    vanishingly unlikely; the store still refuses to overwrite if it ever happens.
    """
    import secrets  # 5 ms of hashlib at start-up, for the commands that never make ids

    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    return TaskId(f"{stamp:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(3)}")


def utc_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@lru_cache(maxsize=32768)  # the scheduler orders every pending task by it on each tick
def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 60
_REPR.maxother = 60


def _brief(value: object) -> str:
    """A short repr of user data; bounded, because YAML aliases can nest a value
    into billions of elements that a plain repr() would expand."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return _shorten(_REPR.repr(value))


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
    process_started: float | None = None  # the agent's start time, to tell a reused pid apart
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

    @property
    def title(self) -> str:
        """The description's first line, cut to 72 characters (a commit subject)."""
        return self.description.strip().splitlines()[0][:72]

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
        import yaml

        text = yaml.dump(
            self.to_dict(),
            Dumper=_dumper(),
            sort_keys=False,
            allow_unicode=True,
            width=100,
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
        raise TaskValidationError(
            "the file contains NUL bytes, so it is binary, not YAML text",
            source=source,
            hint="save the task as UTF-8 YAML",
        )
    if _too_deep(text):
        raise TaskValidationError(
            f"the YAML is nested more than {MAX_DEPTH} levels deep",
            source=source,
            hint="a task needs only a few levels",
        )
    import yaml

    try:
        loaded = yaml.load(text, Loader=_loader())
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
        raise TaskValidationError(
            "the YAML is nested too deeply", source=source, hint="a task needs only a few levels"
        ) from None
    if not isinstance(loaded, Mapping):
        kind = _type_name(loaded) if loaded is not None else "nothing"
        raise TaskValidationError(
            f"a task file must be a YAML mapping of fields, but this one holds {kind}",
            source=source,
            hint="start with 'description: ...'",
        )
    return task_from_mapping(loaded, source=source, default_id=default_id, text=text)


MAX_DEPTH = 100
# every level needs one of the characters counted, so a file with fewer of them than
# MAX_DEPTH is shallow enough; a deeper one that loads would not dump again (yaml's
# representer recurses), and libyaml's C composer crashes the process near 50,000
_DEPTH_CHECK_AT = MAX_DEPTH


def _too_deep(text: str) -> bool:
    """Whether the YAML nests deeper than MAX_DEPTH, found without building it.

    Every level needs one of these characters, so a file with few of them is
    shallow enough and costs no second pass; the event parser is iterative.
    """
    if sum(text.count(c) for c in "[{-:?") < _DEPTH_CHECK_AT:
        return False
    import yaml

    opens = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
    closes = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_loader()):
            if isinstance(event, opens):
                depth += 1
                if depth > MAX_DEPTH:
                    return True
            elif isinstance(event, closes):
                depth -= 1
    except yaml.YAMLError:
        return False  # the load reports it, after no more than MAX_DEPTH levels
    return False


RUNTIME_HINT = "orchestrate writes this field; correct it or delete the field"


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
            raise fail(
                _shorten(str(key)),
                f"field names must be text, not {_type_name(key)}",
                hint="quote the name or delete the field",
            )

    # an empty value means "not given" for every field, as it does for the optional ones
    raw_id = data.get("id")
    from_name = raw_id is None
    if from_name:
        raw_id = default_id
    if raw_id is None:
        raise fail("id", "the task has no id", hint="add 'id: some-name'")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise fail(
            "id", f"must be text, not {_type_name(raw_id)}", hint="for example 'id: add-auth'"
        )
    problem = id_problem(str(raw_id))
    if problem is not None:
        if from_name:
            raise fail(
                "id",
                f"the file has no 'id', so its name gives the id '{_shorten(str(raw_id))}', "
                f"which is not valid: {problem}",
                hint="rename the file, or add a line like 'id: add-auth'",
            )
        raise fail(
            "id",
            f"'{_shorten(str(raw_id))}' is not a valid task id: {problem}",
            hint="for example 'id: add-auth'",
        )
    task_id = TaskId(str(raw_id))

    description = data.get("description")
    if description is None:
        raise fail(
            "description",
            "is required but missing",
            hint="add 'description: what the agent should do'",
        )
    if not isinstance(description, str):
        raise fail(
            "description",
            f"must be text, not {_type_name(description)}",
            hint="for example 'description: Add a login page'; quote it if it looks like a number",
        )
    if not description.strip():
        raise fail("description", "is empty", hint="say what the agent should do")

    priority = data.get("priority")
    if priority is None:
        priority = "normal"
    if priority not in PRIORITIES:
        raise fail(
            "priority", f"{_brief(priority)} is not a priority", hint="use high, normal or low"
        )

    agent = _optional_name(data, "agent", fail)
    fallback = _optional_name(data, "fallback_agent", fail)

    depends_on: list[TaskId] = []
    for dep in _str_list(data, "depends_on", fail, "task ids", "'depends_on: [schema, api]'"):
        dep_problem = id_problem(dep)
        if dep_problem is not None:
            raise fail(
                "depends_on",
                f"'{_shorten(dep)}' is not a valid task id: {dep_problem}",
                hint="list the ids of other tasks",
            )
        if dep == task_id:
            raise fail(
                "depends_on",
                f"the task depends on itself ('{dep}')",
                hint=f"remove '{dep}' from depends_on",
            )
        if dep not in depends_on:
            depends_on.append(TaskId(dep))
    context_files = _str_list(
        data, "context_files", fail, "paths", "'context_files: [docs/api.md]'"
    )
    for path in context_files:
        if not path.strip() or path.startswith("/") or ".." in path.split("/"):
            raise fail(
                "context_files",
                f"'{_shorten(path)}' is not a path inside the repository",
                hint="give paths relative to the repository root, without '..'",
            )

    timeout = data.get("timeout_minutes")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < math.inf
    ):
        raise fail(
            "timeout_minutes",
            f"must be a positive number of minutes, not {_brief(timeout)}",
            hint="for example 'timeout_minutes: 30'",
        )
    retries = data.get("max_retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise fail(
            "max_retries",
            f"must be a whole number 0 or more, not {_brief(retries)}",
            hint="for example 'max_retries: 2'",
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
        if value is None:
            continue
        if isinstance(value, datetime) and name != "waiting_reason":
            # an unquoted time in YAML arrives as a datetime; a naive one is UTC
            aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
            value = utc_iso(aware.timestamp())
        if not isinstance(value, str):
            raise fail(name, f"must be text, not {_type_name(value)}", hint=RUNTIME_HINT)
        if name != "waiting_reason":
            try:
                parse_iso(value)
            except ValueError:
                raise fail(
                    name,
                    f"{_brief(value)} is not a time like 2026-01-31T12:00:00.000000Z",
                    hint="write the time in UTC, or delete the field",
                ) from None
        setattr(task, name, value)
    assignment = data.get("assignment")
    if assignment is not None:
        task.assignment = _record(assignment, Assignment, "assignment", "assignment", fail)
    result = data.get("result")
    if result is not None:
        task.result = _record(result, Result, "result", "result", fail)
    task.attempts = _records(data, "attempts", fail)
    task.previous_attempts = _records(data, "previous_attempts", fail)
    for key, value in data.items():
        if key not in KNOWN_FIELDS:
            task.extra[key] = value
            warnings.append(
                f"{source}: unknown field '{_shorten(key)}' kept as it is "
                "(a newer orchestrate may know it; otherwise check its spelling)"
            )
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
        "datetime": "a date and time",
        "date": "a date",
        "bytes": "binary data",
    }.get(type(value).__name__, type(value).__name__)


def _optional_name(data: Mapping[str, Any], name: str, fail: _Fail) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value):
        raise fail(
            name,
            f"must be the name of a configured agent type, not {_brief(value)}",
            hint=f"for example '{name}: claude'",
        )
    return value


def _str_list(
    data: Mapping[str, Any], name: str, fail: _Fail, what: str, example: str
) -> list[str]:
    value = data.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise fail(
            name,
            f"must be a list of {what}, not {_type_name(value)}",
            hint=f"for example {example}",
        )
    for item in value:
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise fail(
                name,
                f"must be a list of {what}, but holds {_type_name(item)}",
                hint=f"for example {example}",
            )
    return [str(item) for item in value]


# what a field annotation of the record dataclasses accepts, and how to say it
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "text"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "list[str]": ((list,), "a list of text"),
}


def _record(value: object, cls: type[Any], label: str, top: str, fail: _Fail) -> Any:
    """Build one record dataclass from a mapping, checking each field's type."""
    if not isinstance(value, Mapping):
        raise fail(top, f"'{label}' must be a mapping, not {_type_name(value)}", hint=RUNTIME_HINT)
    kwargs: dict[str, Any] = {}
    missing: list[str] = []
    for f in fields(cls):
        item = value.get(f.name)
        if item is None:
            if f.default is MISSING and f.default_factory is MISSING:
                missing.append(f.name)
            continue
        kind = str(f.type).replace(" | None", "")
        if kind == "MergeInfo":
            item = _record(item, MergeInfo, f"{label}.{f.name}", top, fail)
        else:
            types, expected = _KINDS[kind]
            ok = isinstance(item, types) and (bool in types or not isinstance(item, bool))
            if not ok:
                raise fail(
                    top,
                    f"'{label}.{f.name}' must be {expected}, not {_type_name(item)}",
                    hint=RUNTIME_HINT,
                )
            odd = (
                next((e for e in item if not isinstance(e, str)), None)
                if kind == "list[str]"
                else None
            )
            if odd is not None:
                raise fail(
                    top,
                    f"'{label}.{f.name}' must be {expected}, but holds {_type_name(odd)}",
                    hint=RUNTIME_HINT,
                )
        kwargs[f.name] = item
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise fail(top, f"'{label}' misses {names}", hint=RUNTIME_HINT)
    return cls(**kwargs)


def _records(data: Mapping[str, Any], name: str, fail: _Fail) -> list[Attempt]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(name, f"must be a list, not {_type_name(value)}", hint=RUNTIME_HINT)
    return [_record(item, Attempt, f"{name}[{i}]", name, fail) for i, item in enumerate(value, 1)]


def _line_of(text: str | None, key: str) -> int | None:
    """The 1-based line of a top-level key, found only when an error is reported."""
    if text is None:
        return None
    import yaml

    try:
        node = yaml.compose(text, Loader=_loader())
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


_IGNORED_PREFIXES = (".", "#")
_IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".part")


def is_ignored_name(name: str) -> bool:
    """Editor leftovers and hidden files that a drop directory must not treat as tasks."""
    return name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES)
