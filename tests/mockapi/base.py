"""Shared machinery of the mock model APIs: a loopback HTTP server in a thread.

Each mock answers one provider's wire format. What the model "does" is decided
from the request itself (is there already a tool result in the conversation?),
not from a request counter, because the CLIs also send side requests (titles,
token counts, model lists) in an order that changes between versions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Script:
    """What the scripted model does in the worktree."""

    path: str = "hello.txt"
    content: str = "hello from the mock model\n"
    # the edit step replaces `content` by `edited` once the file exists
    edited: str | None = "hello from the mock model, edited\n"
    final_text: str = "Created hello.txt as asked."
    input_tokens: int = 1200
    output_tokens: int = 345

    @property
    def final_content(self) -> str:
        return self.edited if self.edited is not None else self.content


@dataclass(frozen=True)
class Faults:
    fail_500_times: int = 0
    rate_limit: bool = False
    no_work: bool = False
    # seconds from now at which the rate limit "resets", announced to the client
    reset_after_s: int = 3600


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class State:
    script: Script
    faults: Faults
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Recorded] = field(default_factory=list)
    failures_served: int = 0

    def take_failure(self) -> bool:
        with self.lock:
            if self.failures_served < self.faults.fail_500_times:
                self.failures_served += 1
                return True
            return False


class Handler(BaseHTTPRequestHandler):
    """Base handler; subclasses implement `answer(rec)`."""

    protocol_version = "HTTP/1.1"
    # an idle keep-alive connection ends after this, so stop() can join its thread
    timeout = 2
    server: MockHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    @property
    def state(self) -> State:
        return self.server.state

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _record(self, method: str) -> Recorded:
        rec = Recorded(
            method=method,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
        )
        with self.state.lock:
            self.state.requests.append(rec)
        return rec

    def do_GET(self) -> None:
        self.answer(self._record("GET"))

    def do_POST(self) -> None:
        self.answer(self._record("POST"))

    def do_HEAD(self) -> None:
        rec = self._record("HEAD")
        self.send_json(rec, 200, {})

    def answer(self, rec: Recorded) -> None:
        raise NotImplementedError

    # ---- response helpers -------------------------------------------------

    def send_json(
        self, rec: Recorded, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def send_sse(self, rec: Recorded, events: Iterator[tuple[str | None, Any]]) -> None:
        """Stream server-sent events; an event name of None sends a bare `data:` line."""
        rec.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        # no Content-Length: end of stream is end of connection
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        for name, payload in events:
            chunk = ""
            if name is not None:
                chunk += f"event: {name}\n"
            text = payload if isinstance(payload, str) else json.dumps(payload)
            chunk += f"data: {text}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()

    def fault(self, rec: Recorded) -> bool:
        """Serve a configured fault instead of an answer; True if one was served."""
        if self.state.take_failure():
            self.send_error_body(rec, 500, "internal server error (mock)")
            return True
        if self.state.faults.rate_limit:
            self.send_rate_limit(rec)
            return True
        return False

    def reset_epoch(self) -> int:
        return int(time.time()) + self.state.faults.reset_after_s

    def send_error_body(self, rec: Recorded, status: int, message: str) -> None:
        raise NotImplementedError

    def send_rate_limit(self, rec: Recorded) -> None:
        raise NotImplementedError


class MockHTTPServer(ThreadingHTTPServer):
    # non-daemon, joined by server_close(): no handler thread outlives stop()
    daemon_threads = False
    block_on_close = True
    state: State

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a CLI killed mid-request resets its connection: expected, not news
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class MockServer:
    """Context manager: start on 127.0.0.1 on a free port, stop and join on exit."""

    handler: type[Handler] = Handler

    def __init__(self, script: Script | None = None, faults: Faults | None = None) -> None:
        self.state = State(script=script or Script(), faults=faults or Faults())
        self._httpd: MockHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Recorded]:
        with self.state.lock:
            return list(self.state.requests)

    def start(self) -> None:
        httpd = MockHTTPServer(("127.0.0.1", 0), self.handler)
        httpd.state = self.state
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> MockServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
