"""Mock of the Anthropic Messages API (`POST /v1/messages`), as Claude Code uses it.

The scripted turn sequence, decided from the tool results already in the
conversation: `Write` the file, then `Edit` it, then a final text answer.
Requests that offer no `Write` tool (titles, summaries) get a short text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from .base import Handler, MockServer, Recorded

_CWD = re.compile(r"(?:Primary working directory|Working directory|cwd):\s*(\S+)")


def _system_text(body: dict[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    return ""


def _context_text(body: dict[str, Any]) -> str:
    """System prompt plus user text: Claude Code puts its working directory in either."""
    parts = [_system_text(body)]
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return "\n".join(parts)


def _tool_results(body: dict[str, Any]) -> int:
    count = 0
    for message in body.get("messages", []):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            count += sum(
                1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
            )
    return count


class AnthropicHandler(Handler):
    def answer(self, rec: Recorded) -> None:
        path = rec.path.split("?", 1)[0]
        if rec.method != "POST" or not path.endswith("/v1/messages"):
            if path.endswith("/count_tokens"):
                self.send_json(rec, 200, {"input_tokens": 100})
            else:
                self.send_json(
                    rec,
                    404,
                    {"type": "error", "error": {"type": "not_found_error", "message": "not found"}},
                )
            return
        if self.fault(rec):
            return
        body: dict[str, Any] = rec.body if isinstance(rec.body, dict) else {}
        blocks = self.plan(body)
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        if body.get("stream"):
            self.send_sse(rec, self.stream(body, blocks, stop))
        else:
            self.send_json(rec, 200, self.message(body, blocks, stop))

    def plan(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        script = self.state.script
        tools = {t.get("name") for t in body.get("tools", []) if isinstance(t, dict)}
        if "Write" not in tools or self.state.faults.no_work:
            text = script.final_text if "Write" in tools else "Mock title"
            if self.state.faults.no_work and "Write" in tools:
                text = "I looked at the task; nothing needs to change."
            return [{"type": "text", "text": text}]
        match = _CWD.search(_context_text(body))
        target = f"{match.group(1)}/{script.path}" if match else script.path
        done = _tool_results(body)
        tool_id = f"toolu_{uuid.uuid4().hex[:20]}"
        if done == 0:
            return [
                {"type": "text", "text": f"I will create {script.path}."},
                {
                    "type": "tool_use",
                    "id": tool_id,
                    "name": "Write",
                    "input": {"file_path": target, "content": script.content},
                },
            ]
        if done == 1 and script.edited is not None:
            return [
                {
                    "type": "tool_use",
                    "id": tool_id,
                    "name": "Edit",
                    "input": {
                        "file_path": target,
                        "old_string": script.content,
                        "new_string": script.edited,
                    },
                },
            ]
        return [{"type": "text", "text": script.final_text}]

    def message(
        self, body: dict[str, Any], blocks: list[dict[str, Any]], stop: str
    ) -> dict[str, Any]:
        script = self.state.script
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-mock"),
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": script.input_tokens, "output_tokens": script.output_tokens},
        }

    def stream(
        self, body: dict[str, Any], blocks: list[dict[str, Any]], stop: str
    ) -> Iterator[tuple[str | None, Any]]:
        script = self.state.script
        start = self.message(body, [], stop)
        start["stop_reason"] = None
        start["usage"] = {"input_tokens": script.input_tokens, "output_tokens": 1}
        yield "message_start", {"type": "message_start", "message": start}
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                yield (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    yield (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
            else:
                yield (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    },
                )
                raw = json.dumps(block["input"])
                half = len(raw) // 2
                for part in (raw[:half], raw[half:]):
                    yield (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": part},
                        },
                    )
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": script.output_tokens},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    def send_error_body(self, rec: Recorded, status: int, message: str) -> None:
        self.send_json(
            rec, status, {"type": "error", "error": {"type": "api_error", "message": message}}
        )

    def send_rate_limit(self, rec: Recorded) -> None:
        reset = self.reset_epoch()
        self.send_json(
            rec,
            429,
            {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "This request would exceed your account's rate limit. Please try again later.",
                },
            },
            {
                "retry-after": str(self.state.faults.reset_after_s),
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(reset),
                "anthropic-ratelimit-requests-reset": str(reset),
            },
        )


class AnthropicMock(MockServer):
    handler = AnthropicHandler
