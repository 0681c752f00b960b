"""Mock of the Gemini API (`:generateContent`, `:streamGenerateContent?alt=sse`), as Gemini CLI uses it.

Scripted turns: `write_file` creating the file, `replace` editing it, then a
final text. Requests without the file tools (routing, next-speaker checks) get
a short text, or an empty JSON object when they ask for JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .base import Handler, MockServer, Recorded


def _function_responses(body: dict[str, Any]) -> int:
    return sum(
        1
        for content in body.get("contents", [])
        if isinstance(content, dict)
        for part in content.get("parts", [])
        if isinstance(part, dict) and "functionResponse" in part
    )


def _tool_names(body: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for tool in body.get("tools", []) or []:
        if isinstance(tool, dict):
            for decl in tool.get("functionDeclarations", []) or []:
                names.add(str(decl.get("name")))
    return names


def _example(schema: Any) -> Any:
    """The smallest value that satisfies a (Gemini-style, upper-case typed) JSON schema."""
    if not isinstance(schema, dict):
        return None
    kind = str(schema.get("type", "OBJECT")).upper()
    if kind == "OBJECT":
        props = schema.get("properties") or {}
        return {name: _example(props[name]) for name in schema.get("required") or props}
    if kind == "ARRAY":
        return []
    if kind in ("INTEGER", "NUMBER"):
        return 50
    if kind == "BOOLEAN":
        return False
    enum = schema.get("enum")
    return enum[0] if enum else "mock"


class GeminiHandler(Handler):
    def answer(self, rec: Recorded) -> None:
        path = rec.path.split("?", 1)[0]
        if rec.method != "POST" or ":" not in path:
            self.send_json(
                rec,
                404,
                {"error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}},
            )
            return
        method = path.rsplit(":", 1)[1]
        body: dict[str, Any] = rec.body if isinstance(rec.body, dict) else {}
        if method == "countTokens":
            self.send_json(rec, 200, {"totalTokens": 100})
            return
        if method not in ("generateContent", "streamGenerateContent"):
            self.send_json(
                rec,
                404,
                {"error": {"code": 404, "message": f"no method {method}", "status": "NOT_FOUND"}},
            )
            return
        # faults hit the agent's own turns, not the CLI's routing side calls
        if "write_file" in _tool_names(body) and self.fault(rec):
            return
        parts, last_model = self.plan(body)
        if method == "streamGenerateContent":
            self.send_sse(rec, self.stream(parts, last_model))
        else:
            self.send_json(rec, 200, self.response(parts, last_model))

    def plan(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        script = self.state.script
        tools = _tool_names(body)
        config = body.get("generationConfig") or {}
        if "write_file" not in tools:
            if config.get("responseMimeType") == "application/json":
                schema = config.get("responseJsonSchema") or config.get("responseSchema")
                return [{"text": json.dumps(_example(schema))}], "side"
            return [{"text": "Mock side answer."}], "side"
        if self.state.faults.no_work:
            return [{"text": "I looked at the task; nothing needs to change."}], "final"
        done = _function_responses(body)
        if done == 0:
            return [
                {"text": f"I will create {script.path}."},
                {
                    "functionCall": {
                        "name": "write_file",
                        "args": {"file_path": script.path, "content": script.content},
                    }
                },
            ], "tool"
        if done == 1 and script.edited is not None and "replace" in tools:
            return [
                {
                    "functionCall": {
                        "name": "replace",
                        "args": {
                            "file_path": script.path,
                            "old_string": script.content,
                            "new_string": script.edited,
                            "instruction": "Mark the greeting as edited.",
                        },
                    }
                }
            ], "tool"
        return [{"text": script.final_text}], "final"

    def usage(self) -> dict[str, int]:
        script = self.state.script
        return {
            "promptTokenCount": script.input_tokens,
            "candidatesTokenCount": script.output_tokens,
            "totalTokenCount": script.input_tokens + script.output_tokens,
        }

    def response(self, parts: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        return {
            "candidates": [
                {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": self.usage(),
            "modelVersion": "gemini-mock",
        }

    def stream(self, parts: list[dict[str, Any]], kind: str) -> Iterator[tuple[str | None, Any]]:
        # text first in its own chunk, as the real API streams, then the rest with the usage
        texts = [p for p in parts if "text" in p]
        others = [p for p in parts if "text" not in p]
        if texts and others:
            yield (
                None,
                {
                    "candidates": [{"content": {"role": "model", "parts": texts}, "index": 0}],
                    "modelVersion": "gemini-mock",
                },
            )
            yield None, self.response(others, kind)
        else:
            yield None, self.response(parts, kind)

    def send_error_body(self, rec: Recorded, status: int, message: str) -> None:
        self.send_json(
            rec, status, {"error": {"code": status, "message": message, "status": "INTERNAL"}}
        )

    def send_rate_limit(self, rec: Recorded) -> None:
        seconds = self.state.faults.reset_after_s
        self.send_json(
            rec,
            429,
            {
                "error": {
                    "code": 429,
                    "message": "You exceeded your current quota, please check your plan and billing details. "
                    f"Please retry in {seconds}s.",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [
                                {
                                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                    "quotaValue": "100",
                                }
                            ],
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{seconds}s",
                        },
                    ],
                }
            },
            {"retry-after": str(seconds)},
        )


class GeminiMock(MockServer):
    handler = GeminiHandler


__all__ = ["GeminiMock"]
