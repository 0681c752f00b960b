"""Mock of the OpenAI Responses API (`POST /v1/responses`, streamed), as Codex uses it.

The scripted turns: `apply_patch` adding the file, `apply_patch` editing it,
then a final assistant message. Depending on the model's metadata Codex offers
`apply_patch` as a custom (freeform) tool, as a function tool, or only through
its shell tool (an `apply_patch` heredoc that Codex intercepts); the mock
answers in whichever form the request offers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .base import Handler, MockServer, Recorded

_OUTPUT_TYPES = {"function_call_output", "custom_tool_call_output"}


def add_file_patch(path: str, content: str) -> str:
    lines = [f"+{line}" for line in content.splitlines()]
    return "\n".join(["*** Begin Patch", f"*** Add File: {path}", *lines, "*** End Patch"]) + "\n"


def update_file_patch(path: str, old: str, new: str) -> str:
    body = [f"-{line}" for line in old.splitlines()] + [f"+{line}" for line in new.splitlines()]
    return (
        "\n".join(["*** Begin Patch", f"*** Update File: {path}", "@@", *body, "*** End Patch"])
        + "\n"
    )


class ResponsesHandler(Handler):
    def answer(self, rec: Recorded) -> None:
        path = rec.path.split("?", 1)[0]
        if rec.method == "GET" and path.endswith("/models"):
            self.send_json(rec, 200, {"object": "list", "data": [], "models": []})
            return
        if rec.method != "POST" or not path.endswith("/responses"):
            self.send_json(
                rec, 404, {"error": {"type": "not_found", "message": f"no route {path}"}}
            )
            return
        if self.fault(rec):
            return
        body: dict[str, Any] = rec.body if isinstance(rec.body, dict) else {}
        items = self.plan(body)
        self.send_sse(rec, self.stream(body, items))

    def plan(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        script = self.state.script
        tools = {str(t.get("name")): t for t in body.get("tools", []) if isinstance(t, dict)}
        patch_tool = tools.get("apply_patch")
        shell_tool = tools.get("exec_command") or tools.get("shell")
        done = sum(
            1
            for item in body.get("input", [])
            if isinstance(item, dict) and item.get("type") in _OUTPUT_TYPES
        )
        if self.state.faults.no_work or (patch_tool is None and shell_tool is None):
            return [
                self.text_item(
                    "I looked at the task; nothing needs to change."
                    if self.state.faults.no_work
                    else script.final_text
                )
            ]
        if done == 0:
            patch = add_file_patch(script.path, script.content)
        elif done == 1 and script.edited is not None:
            patch = update_file_patch(script.path, script.content, script.edited)
        else:
            return [self.text_item(script.final_text)]
        call_id = f"call_{uuid.uuid4().hex[:16]}"
        if patch_tool is None:
            # Codex intercepts an `apply_patch` heredoc in a shell call and applies
            # it with its own patch tool, not through the shell
            return [
                {
                    "type": "function_call",
                    "id": f"fc_{call_id}",
                    "status": "completed",
                    "call_id": call_id,
                    "name": "exec_command" if "exec_command" in tools else "shell",
                    "arguments": json.dumps({"cmd": f"apply_patch <<'PATCH'\n{patch}PATCH\n"}),
                }
            ]
        if patch_tool.get("type") == "custom":
            return [
                {
                    "type": "custom_tool_call",
                    "id": f"ctc_{call_id}",
                    "status": "completed",
                    "call_id": call_id,
                    "name": "apply_patch",
                    "input": patch,
                }
            ]
        return [
            {
                "type": "function_call",
                "id": f"fc_{call_id}",
                "status": "completed",
                "call_id": call_id,
                "name": "apply_patch",
                "arguments": json.dumps({"input": patch}),
            }
        ]

    @staticmethod
    def text_item(text: str) -> dict[str, Any]:
        return {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex[:16]}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }

    def stream(
        self, body: dict[str, Any], items: list[dict[str, Any]]
    ) -> Iterator[tuple[str | None, Any]]:
        script = self.state.script
        response: dict[str, Any] = {
            "id": f"resp_{uuid.uuid4().hex[:16]}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": body.get("model", "mock-model"),
            "output": [],
        }
        yield "response.created", {"type": "response.created", "response": response}
        for index, item in enumerate(items):
            yield (
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": index, "item": item},
            )
            if item["type"] == "message":
                text = item["content"][0]["text"]
                yield (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": text,
                    },
                )
            yield (
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": index, "item": item},
            )
        usage = {
            "input_tokens": script.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": script.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": script.input_tokens + script.output_tokens,
        }
        done = dict(response, status="completed", output=items, usage=usage)
        yield "response.completed", {"type": "response.completed", "response": done}

    def send_error_body(self, rec: Recorded, status: int, message: str) -> None:
        self.send_json(
            rec,
            status,
            {
                "error": {
                    "type": "server_error",
                    "code": "server_error",
                    "message": message,
                    "param": None,
                }
            },
        )

    def send_rate_limit(self, rec: Recorded) -> None:
        seconds = self.state.faults.reset_after_s
        self.send_json(
            rec,
            429,
            {
                "error": {
                    "type": "usage_limit_reached",
                    "code": "rate_limit_exceeded",
                    "message": "You exceeded your current quota or rate limit (mock).",
                    "param": None,
                    "plan_type": "plus",
                    "resets_at": self.reset_epoch(),
                    "resets_in_seconds": seconds,
                }
            },
            {"retry-after": str(seconds), "x-ratelimit-reset-requests": f"{seconds}s"},
        )


class ResponsesMock(MockServer):
    handler = ResponsesHandler
