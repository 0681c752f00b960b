"""Every rule of the task format, and the exact message a user sees when one is broken."""

from __future__ import annotations

import time

import pytest
import yaml

from protocol.errors import TaskValidationError
from protocol.task import (
    MAX_TASK_BYTES,
    Assignment,
    Attempt,
    MergeInfo,
    Result,
    Task,
    id_from_filename,
    id_problem,
    is_ignored_name,
    new_task_id,
    parse_task_bytes,
    validate_id,
)

SRC = "tasks/pending/x.yaml"
# nine levels of nine: a plain repr() of the last alias would be 387 million items
BOMB = (
    b"a: &a [x, x, x, x, x, x, x, x, x]\n"
    + b"".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n".encode()
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + b"description: a\ntimeout_minutes: *i\n"
)


def parse(data: bytes, default_id: str | None = "x"):  # type: ignore[no-untyped-def]
    return parse_task_bytes(data, source=SRC, default_id=default_id)


def error_of(data: bytes, default_id: str | None = "x") -> str:
    with pytest.raises(TaskValidationError) as info:
        parse(data, default_id)
    return str(info.value)


REJECTIONS = [
    pytest.param(
        b"description: " + b"a" * MAX_TASK_BYTES,
        "tasks/pending/x.yaml: the file is larger than the limit of 1048576 bytes (put long material in a file and name it in context_files)",
        id="too_large",
    ),
    pytest.param(
        b"",
        "tasks/pending/x.yaml: the file is empty (a task needs at least 'description: ...')",
        id="empty",
    ),
    pytest.param(
        b"  \n\n",
        "tasks/pending/x.yaml: the file is empty (a task needs at least 'description: ...')",
        id="blank",
    ),
    pytest.param(
        b"description: caf\xe9\n",
        "tasks/pending/x.yaml: the file is not UTF-8 text (byte 16 is 0xe9) (save the task as UTF-8 YAML)",
        id="not_utf8",
    ),
    pytest.param(
        b"description: a\x00b\n",
        "tasks/pending/x.yaml: the file contains NUL bytes, so it is binary, not YAML text (save the task as UTF-8 YAML)",
        id="nul",
    ),
    pytest.param(
        b"description: [unclosed\n",
        "tasks/pending/x.yaml, line 2: this is not valid YAML: did not find expected ',' or ']' (fix the YAML syntax and submit the file again)",
        id="bad_yaml",
    ),
    pytest.param(
        b"description: a\n\tpriority: high\n",
        "tasks/pending/x.yaml, line 2: this is not valid YAML: found a tab character that violates indentation (fix the YAML syntax and submit the file again)",
        id="bad_yaml_tab",
    ),
    pytest.param(
        b"- description: a\n",
        "tasks/pending/x.yaml: a task file must be a YAML mapping of fields, but this one holds a list (start with 'description: ...')",
        id="list",
    ),
    pytest.param(
        b"just some words\n",
        "tasks/pending/x.yaml: a task file must be a YAML mapping of fields, but this one holds text (start with 'description: ...')",
        id="scalar",
    ),
    pytest.param(
        b"# nothing here\n",
        "tasks/pending/x.yaml: a task file must be a YAML mapping of fields, but this one holds nothing (start with 'description: ...')",
        id="comment_only",
    ),
    pytest.param(
        b"[" * 60000,
        "tasks/pending/x.yaml: the YAML is nested more than 100 levels deep (a task needs only a few levels)",
        id="deep",
    ),
    pytest.param(
        b"description: a\n1: x\n",
        "tasks/pending/x.yaml, line 2, field '1': field names must be text, not a number (quote the name or delete the field)",
        id="key_not_text",
    ),
    pytest.param(
        b"id: [a]\ndescription: a\n",
        "tasks/pending/x.yaml, line 1, field 'id': must be text, not a list (for example 'id: add-auth')",
        id="id_list",
    ),
    pytest.param(
        b"id: ../x\ndescription: a\n",
        "tasks/pending/x.yaml, line 1, field 'id': '../x' is not a valid task id: it contains '/' (U+002F); an id is 1 to 64 ASCII letters, digits, '.', '_' or '-', starts with a letter or digit, and has no '..' (for example 'id: add-auth')",
        id="id_hostile",
    ),
    pytest.param(
        b"priority: high\n",
        "tasks/pending/x.yaml, field 'description': is required but missing (add 'description: what the agent should do')",
        id="description_missing",
    ),
    pytest.param(
        b"description: 42\n",
        "tasks/pending/x.yaml, line 1, field 'description': must be text, not a number (for example 'description: Add a login page'; quote it if it looks like a number)",
        id="description_number",
    ),
    pytest.param(
        b"description: '   '\n",
        "tasks/pending/x.yaml, line 1, field 'description': is empty (say what the agent should do)",
        id="description_blank",
    ),
    pytest.param(
        b"description: a\npriority: urgent\n",
        "tasks/pending/x.yaml, line 2, field 'priority': 'urgent' is not a priority (use high, normal or low)",
        id="priority",
    ),
    pytest.param(
        b"description: a\npriority: [high]\n",
        "tasks/pending/x.yaml, line 2, field 'priority': ['high'] is not a priority (use high, normal or low)",
        id="priority_list",
    ),
    pytest.param(
        b"description: a\nagent: 'claude code'\n",
        "tasks/pending/x.yaml, line 2, field 'agent': must be the name of a configured agent type, not 'claude code' (for example 'agent: claude')",
        id="agent",
    ),
    pytest.param(
        b"description: a\nfallback_agent: 7\n",
        "tasks/pending/x.yaml, line 2, field 'fallback_agent': must be the name of a configured agent type, not 7 (for example 'fallback_agent: claude')",
        id="fallback",
    ),
    pytest.param(
        b"description: a\ndepends_on: [schema, x]\n",
        "tasks/pending/x.yaml, line 2, field 'depends_on': the task depends on itself ('x') (remove 'x' from depends_on)",
        id="dep_self",
    ),
    pytest.param(
        b"description: a\ndepends_on: [-rf]\n",
        "tasks/pending/x.yaml, line 2, field 'depends_on': '-rf' is not a valid task id: it starts with '-'; an id is 1 to 64 ASCII letters, digits, '.', '_' or '-', starts with a letter or digit, and has no '..' (list the ids of other tasks)",
        id="dep_invalid",
    ),
    pytest.param(
        b"description: a\ndepends_on: {a: 1}\n",
        "tasks/pending/x.yaml, line 2, field 'depends_on': must be a list of task ids, not a mapping (for example 'depends_on: [schema, api]')",
        id="dep_mapping",
    ),
    pytest.param(
        b"description: a\ndepends_on: [[a]]\n",
        "tasks/pending/x.yaml, line 2, field 'depends_on': must be a list of task ids, but holds a list (for example 'depends_on: [schema, api]')",
        id="dep_item",
    ),
    pytest.param(
        b"description: a\ncontext_files: [/etc/passwd]\n",
        "tasks/pending/x.yaml, line 2, field 'context_files': '/etc/passwd' is not a path inside the repository (give paths relative to the repository root, without '..')",
        id="ctx_abs",
    ),
    pytest.param(
        b"description: a\ncontext_files: [docs/../../x]\n",
        "tasks/pending/x.yaml, line 2, field 'context_files': 'docs/../../x' is not a path inside the repository (give paths relative to the repository root, without '..')",
        id="ctx_dotdot",
    ),
    pytest.param(
        b"description: a\ncontext_files: ['']\n",
        "tasks/pending/x.yaml, line 2, field 'context_files': '' is not a path inside the repository (give paths relative to the repository root, without '..')",
        id="ctx_empty",
    ),
    pytest.param(
        b"description: a\ncontext_files: 3\n",
        "tasks/pending/x.yaml, line 2, field 'context_files': must be a list of paths, not a number (for example 'context_files: [docs/api.md]')",
        id="ctx_number",
    ),
    pytest.param(
        b"description: a\ntimeout_minutes: 0\n",
        "tasks/pending/x.yaml, line 2, field 'timeout_minutes': must be a positive number of minutes, not 0 (for example 'timeout_minutes: 30')",
        id="timeout_zero",
    ),
    pytest.param(
        b"description: a\ntimeout_minutes: '30'\n",
        "tasks/pending/x.yaml, line 2, field 'timeout_minutes': must be a positive number of minutes, not '30' (for example 'timeout_minutes: 30')",
        id="timeout_text",
    ),
    pytest.param(
        b"description: a\ntimeout_minutes: true\n",
        "tasks/pending/x.yaml, line 2, field 'timeout_minutes': must be a positive number of minutes, not true (for example 'timeout_minutes: 30')",
        id="timeout_bool",
    ),
    pytest.param(
        b"description: a\ntimeout_minutes: .inf\n",
        "tasks/pending/x.yaml, line 2, field 'timeout_minutes': must be a positive number of minutes, not inf (for example 'timeout_minutes: 30')",
        id="timeout_inf",
    ),
    pytest.param(
        b"description: a\nmax_retries: -1\n",
        "tasks/pending/x.yaml, line 2, field 'max_retries': must be a whole number 0 or more, not -1 (for example 'max_retries: 2')",
        id="retries_neg",
    ),
    pytest.param(
        b"description: a\nmax_retries: 1.5\n",
        "tasks/pending/x.yaml, line 2, field 'max_retries': must be a whole number 0 or more, not 1.5 (for example 'max_retries: 2')",
        id="retries_float",
    ),
    pytest.param(
        b"description: a\nsubmitted_at: yesterday\n",
        "tasks/pending/x.yaml, line 2, field 'submitted_at': 'yesterday' is not a time like 2026-01-31T12:00:00.000000Z (write the time in UTC, or delete the field)",
        id="submitted_bad",
    ),
    pytest.param(
        b"description: a\nsubmitted_at: 5\n",
        "tasks/pending/x.yaml, line 2, field 'submitted_at': must be text, not a number (orchestrate writes this field; correct it or delete the field)",
        id="submitted_num",
    ),
    pytest.param(
        b"description: a\nwaiting_reason: 5\n",
        "tasks/pending/x.yaml, line 2, field 'waiting_reason': must be text, not a number (orchestrate writes this field; correct it or delete the field)",
        id="reason_num",
    ),
    pytest.param(
        b"description: a\nassignment: yes\n",
        "tasks/pending/x.yaml, line 2, field 'assignment': 'assignment' must be a mapping, not true/false (orchestrate writes this field; correct it or delete the field)",
        id="assign_text",
    ),
    pytest.param(
        b"description: a\nassignment: {agent_id: a, agent_type: b}\n",
        "tasks/pending/x.yaml, line 2, field 'assignment': 'assignment' misses 'worktree', 'branch', 'host', 'attempt', 'assigned_at' (orchestrate writes this field; correct it or delete the field)",
        id="assign_missing",
    ),
    pytest.param(
        b"description: a\nassignment: {agent_id: a, agent_type: b, worktree: w, branch: b, host: h, attempt: one, assigned_at: t}\n",
        "tasks/pending/x.yaml, line 2, field 'assignment': 'assignment.attempt' must be a whole number, not text (orchestrate writes this field; correct it or delete the field)",
        id="assign_type",
    ),
    pytest.param(
        b"description: a\nresult:\n  merge: merged\n",
        "tasks/pending/x.yaml, line 2, field 'result': 'result.merge' must be a mapping, not text (orchestrate writes this field; correct it or delete the field)",
        id="merge_type",
    ),
    pytest.param(
        b"description: a\nresult:\n  merge: {status: conflict, target: main, conflicts: [1]}\n",
        "tasks/pending/x.yaml, line 2, field 'result': 'result.merge.conflicts' must be a list of text, but holds a number (orchestrate writes this field; correct it or delete the field)",
        id="merge_conflicts",
    ),
    pytest.param(
        b"description: a\nattempts: {number: 1}\n",
        "tasks/pending/x.yaml, line 2, field 'attempts': must be a list, not a mapping (orchestrate writes this field; correct it or delete the field)",
        id="attempts_map",
    ),
    pytest.param(
        b"description: a\nattempts:\n- {number: 1, agent_id: a, agent_type: b, started_at: t}\n- {number: 2}\n",
        "tasks/pending/x.yaml, line 2, field 'attempts': 'attempts[2]' misses 'agent_id', 'agent_type', 'started_at' (orchestrate writes this field; correct it or delete the field)",
        id="attempt_item",
    ),
    pytest.param(
        BOMB,
        "tasks/pending/x.yaml, line 11, field 'timeout_minutes': must be a positive number of minutes, not [[[...], [...], [...], [...], [...], [...], ...], [[...], [...], [...], [...]... (for example 'timeout_minutes: 30')",
        id="bomb",
    ),
]


@pytest.mark.parametrize(("data", "message"), REJECTIONS)
def test_rejection_names_file_line_field_problem_and_fix(data: bytes, message: str) -> None:
    started = time.monotonic()
    assert error_of(data) == message
    assert time.monotonic() - started < 2.0  # no input makes validation expensive


def test_error_carries_its_facts_as_fields() -> None:
    with pytest.raises(TaskValidationError) as info:
        parse(b"description: a\npriority: urgent\n")
    err = info.value
    assert (err.source, err.line, err.field) == (SRC, 2, "priority")
    assert err.problem == "'urgent' is not a priority"
    assert err.hint == "use high, normal or low"


# ----- ids --------------------------------------------------------------------------------


def test_id_defaults_to_the_file_name_without_yaml_or_yml() -> None:
    assert id_from_filename("add-auth.yaml") == "add-auth"
    assert id_from_filename("add-auth.yml") == "add-auth"
    assert id_from_filename("add-auth.json") is None
    assert id_from_filename("add-auth") is None
    assert parse(b"description: a\n", default_id="add-auth").task.id == "add-auth"


def test_id_field_wins_over_the_file_name_and_empty_id_falls_back() -> None:
    assert parse(b"id: other\ndescription: a\n").task.id == "other"
    assert parse(b"id:\ndescription: a\n").task.id == "x"
    assert parse(b"id: 42\ndescription: a\n").task.id == "42"


def test_invalid_file_name_is_blamed_on_the_name() -> None:
    assert error_of(b"description: a\n", default_id="my task") == (
        "tasks/pending/x.yaml, field 'id': the file has no 'id', so its name gives the id "
        "'my task', which is not valid: it contains ' ' (U+0020); an id is 1 to 64 ASCII "
        "letters, digits, '.', '_' or '-', starts with a letter or digit, and has no '..' "
        "(rename the file, or add a line like 'id: add-auth')"
    )


def test_a_mapping_without_id_or_file_name_has_no_id() -> None:
    assert error_of(b"description: a\n", default_id=None) == (
        "tasks/pending/x.yaml, field 'id': the task has no id (add 'id: some-name')"
    )


RULE = (
    "an id is 1 to 64 ASCII letters, digits, '.', '_' or '-', starts with a letter or digit, "
    "and has no '..'"
)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("../x", f"it contains '/' (U+002F); {RULE}"),
        ("-rf", f"it starts with '-'; {RULE}"),
        ("x/y", f"it contains '/' (U+002F); {RULE}"),
        ("\u0430dd-auth", f"it contains '\u0430' (U+0430); {RULE}"),  # Cyrillic a
        ("add\u2010auth", f"it contains '\u2010' (U+2010); {RULE}"),  # Unicode hyphen
        ("\uff21\uff22", f"it contains '\uff21' (U+FF21); {RULE}"),  # fullwidth
        ("a" * 5000, f"it is 5000 characters long; {RULE}"),
        ("a" * 65, f"it is 65 characters long; {RULE}"),
        ("a..b", f"it contains '..'; {RULE}"),
        ("x.lock", "it ends in '.' or '.lock', which git refuses in a branch name"),
        ("x.", "it ends in '.' or '.lock', which git refuses in a branch name"),
        ("", f"it is empty; {RULE}"),
        (".hidden", f"it starts with '.'; {RULE}"),
        ("a b", f"it contains ' ' (U+0020); {RULE}"),
        ("a\n", f"it contains '\\n' (U+000A); {RULE}"),
        ("a:b", f"it contains ':' (U+003A); {RULE}"),
        ("a~1", f"it contains '~' (U+007E); {RULE}"),
    ],
)
def test_hostile_ids_are_rejected(value: str, problem: str) -> None:
    assert id_problem(value) == problem
    with pytest.raises(TaskValidationError) as info:
        validate_id(value)
    short = value if len(value) <= 80 else value[:77] + "..."
    assert str(info.value) == (
        f"'{short}' is not a valid task id: {problem} (for example add-auth)"
    )


@pytest.mark.parametrize("value", ["a", "A1", "add-auth", "v1.2_x-3", "9" * 64, "a.b.c"])
def test_good_ids_are_accepted(value: str) -> None:
    assert id_problem(value) is None
    assert validate_id(value) == value


def test_generated_ids_are_valid_unique_and_sort_by_time() -> None:
    base = 1_800_000_000.0
    ids = [new_task_id(base + i * 0.000_001) for i in range(200)] + [new_task_id(base + 86_400)]
    assert all(id_problem(i) is None for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    same_instant = {new_task_id(base) for _ in range(1000)}
    assert len(same_instant) == 1000  # the random tail keeps concurrent submitters apart
    assert new_task_id(base).startswith("20270115-080000-000000-")


# ----- fields that are accepted ----------------------------------------------------------


def test_defaults_of_a_minimal_task() -> None:
    task = parse(b"description: do it\n").task
    assert task == Task(id="x", description="do it")  # type: ignore[arg-type]
    assert task.priority == "normal"


def test_every_submitted_field() -> None:
    task = parse(
        b"id: add-auth\n"
        b"description: |\n  Implement JWT login.\n"
        b"priority: high\n"
        b"agent: claude\n"
        b"fallback_agent: codex\n"
        b"depends_on: [schema, schema, 7]\n"
        b"context_files: [context/project_overview.md]\n"
        b"timeout_minutes: 30\n"
        b"max_retries: 0\n"
    ).task
    assert task.id == "add-auth"
    assert task.description == "Implement JWT login.\n"
    assert task.priority == "high"
    assert (task.agent, task.fallback_agent) == ("claude", "codex")
    assert task.depends_on == ["schema", "7"]  # duplicates dropped, numbers are ids too
    assert task.context_files == ["context/project_overview.md"]
    assert task.timeout_minutes == 30.0
    assert task.max_retries == 0


def test_single_strings_become_lists_and_nulls_mean_default() -> None:
    task = parse(b"description: a\ndepends_on: schema\ncontext_files: a.md\npriority:\n").task
    assert task.depends_on == ["schema"]
    assert task.context_files == ["a.md"]
    assert task.priority == "normal"


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_each_priority(priority: str) -> None:
    assert parse(f"description: a\npriority: {priority}\n".encode()).task.priority == priority


def test_an_unquoted_yaml_time_is_accepted_as_utc() -> None:
    task = parse(b"description: a\nnot_before: 2027-01-15T08:00:00Z\n").task
    assert task.not_before == "2027-01-15T08:00:00.000000Z"


def test_unknown_fields_are_kept_with_a_warning() -> None:
    parsed = parse(b"description: a\nowner: ana\nlabels: [x, y]\n")
    assert parsed.task.extra == {"owner": "ana", "labels": ["x", "y"]}
    assert parsed.warnings == [
        f"{SRC}: unknown field 'owner' kept as it is (a newer orchestrate may know it; "
        "otherwise check its spelling)",
        f"{SRC}: unknown field 'labels' kept as it is (a newer orchestrate may know it; "
        "otherwise check its spelling)",
    ]
    again = parse(parsed.task.dump())
    assert again.task.extra == parsed.task.extra


def test_a_full_task_survives_dump_and_parse() -> None:
    task = Task(
        id="t1",  # type: ignore[arg-type]
        description="line one\nline: two\n  - three\n\u2028 yes\n",
        priority="low",
        depends_on=["a", "b"],  # type: ignore[list-item]
        timeout_minutes=2.5,
        max_retries=3,
        submitted_at="2027-01-15T08:00:00.000000Z",
        waiting_reason="'quoted' and: colons",
        assignment=Assignment(
            agent_id="c-1",
            agent_type="claude",
            worktree="w",
            branch="orchestrate/t1",
            host="h",
            attempt=2,
            assigned_at="2027-01-15T08:00:00.000000Z",
            pid=123,
            process_started=1.5,
        ),
        attempts=[Attempt(number=1, agent_id="c-1", agent_type="claude", started_at="s")],
        previous_attempts=[Attempt(number=1, agent_id="c-0", agent_type="codex", started_at="s")],
        result=Result(
            commit="abc",
            files_changed=["a.py"],
            cost_usd=0.5,
            input_tokens=10,
            log_truncated=True,
            merge=MergeInfo(status="conflict", target="main", conflicts=["a.py"]),
        ),
        extra={"owner": "ana"},
    )
    assert parse(task.dump(), default_id="t1").task == task


def test_a_dumped_file_is_plain_safe_yaml_without_status() -> None:
    data = yaml.safe_load(Task(id="t", description="d").dump())  # type: ignore[arg-type]
    assert data == {"id": "t", "description": "d"}


# ----- names a drop directory ignores -----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [".#x.yaml", "x.yaml~", ".x.yaml.swp", ".x.yaml.swx", ".hidden", "#x.yaml#", "x.tmp", "x.part"],
)
def test_editor_leftovers_and_hidden_files_are_ignored(name: str) -> None:
    assert is_ignored_name(name)


@pytest.mark.parametrize("name", ["x.yaml", "x.yml", "notes.txt"])
def test_other_names_are_looked_at(name: str) -> None:
    assert not is_ignored_name(name)
