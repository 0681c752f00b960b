"""Mock of OpenAI Chat Completions (`POST /v1/chat/completions`), as Aider uses it.

Aider edits by text, not tool calls: the reply carries the file in the edit
format that Aider's system prompt asked for (a SEARCH/REPLACE block creating
the file, or the whole file under its name). Streaming and non-streaming.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from .base import Handler, MockServer, Recorded

FENCE = "`" * 3


def _system(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages", []):
        if message.get("role") == "system":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            parts.append(str(content))
    return "\n".join(parts)


class ChatHandler(Handler):
    def answer(self, rec: Recorded) -> None:
        path = rec.path.split("?", 1)[0]
        if rec.method == "GET" and path.endswith("/models"):
            self.send_json(
                rec, 200, {"object": "list", "data": [{"id": "mock-model", "object": "model"}]}
            )
            return
        if rec.method != "POST" or not path.endswith("/chat/completions"):
            self.send_json(
                rec,
                404,
                {"error": {"message": f"no route {path}", "type": "invalid_request_error"}},
            )
            return
        if self.fault(rec):
            return
        body: dict[str, Any] = rec.body if isinstance(rec.body, dict) else {}
        text = self.reply(body)
        if body.get("stream"):
            self.send_sse(rec, self.stream(body, text))
        else:
            self.send_json(rec, 200, self.completion(body, text))

    def reply(self, body: dict[str, Any]) -> str:
        script = self.state.script
        if self.state.faults.no_work:
            return "I looked at the task; nothing needs to change."
        system = _system(body)
        if "SEARCH" in system and "REPLACE" in system:
            edit = "\n".join(
                [
                    script.path,
                    FENCE,
                    "<<<<<<< SEARCH",
                    "=======",
                    script.final_content.rstrip("\n"),
                    ">>>>>>> REPLACE",
                    FENCE,
                ]
            )
        elif "commit message" in system.lower():
            return "feat: add hello.txt"
        else:
            edit = "\n".join([script.path, FENCE, script.final_content.rstrip("\n"), FENCE])
        return f"I will create {script.path}.\n\n{edit}\n\n{script.final_text}\n"

    def usage(self) -> dict[str, int]:
        script = self.state.script
        return {
            "prompt_tokens": script.input_tokens,
            "completion_tokens": script.output_tokens,
            "total_tokens": script.input_tokens + script.output_tokens,
        }

    def completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "mock-model"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": self.usage(),
        }

    def stream(self, body: dict[str, Any], text: str) -> Iterator[tuple[str | None, Any]]:
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "mock-model"),
        }
        yield (
            None,
            dict(
                base,
                choices=[
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            ),
        )
        for line in text.splitlines(keepends=True):
            yield (
                None,
                dict(
                    base, choices=[{"index": 0, "delta": {"content": line}, "finish_reason": None}]
                ),
            )
        yield None, dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
        # usage arrives in a final chunk with no choices when stream_options asks for it
        yield None, dict(base, choices=[], usage=self.usage())
        yield None, "[DONE]"

    def send_error_body(self, rec: Recorded, status: int, message: str) -> None:
        self.send_json(
            rec,
            status,
            {"error": {"message": message, "type": "server_error", "param": None, "code": None}},
        )

    def send_rate_limit(self, rec: Recorded) -> None:
        seconds = self.state.faults.reset_after_s
        self.send_json(
            rec,
            429,
            {
                "error": {
                    "message": "Rate limit reached for requests (mock). "
                    f"Please try again in {seconds}s.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            {"retry-after": str(seconds), "x-ratelimit-reset-requests": f"{seconds}s"},
        )


class ChatMock(MockServer):
    handler = ChatHandler
