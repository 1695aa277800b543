"""A scripted OpenAI-compatible chat-completions server on loopback, for tests, benchmarks and
demos without a model: ``with FakeChatServer() as llm: settings.llm_base_url = llm.url``.

Replies are taken from ``script`` in order (`Reply`: status, content, raw body, delay); when the
script is empty, a valid pattern JSON derived from the request is returned. Every request is
recorded (path, headers, parsed body).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a chat completion with ``content``, or ``body`` as given."""

    status: int = 200
    content: str | None = None
    body: str | None = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def user_text(self) -> str:
        """All user messages, joined."""
        return "\n".join(
            str(m.get("content", ""))
            for m in self.body.get("messages", [])
            if m.get("role") == "user"
        )


def default_pattern_json(request: dict[str, Any]) -> str:
    """A valid pattern reply naming the request's first line (deterministic)."""
    text = ""
    for m in request.get("messages", []):
        if m.get("role") == "user":
            text = str(m.get("content", ""))
    request_part = text.split("## Request", 1)[-1].strip().splitlines()
    topic = (request_part[0] if request_part else "the task")[:60]
    return json.dumps(
        {
            "name": f"Solve: {topic}",
            "description": f"A reusable approach distilled from the request about {topic}.",
            "prerequisites": ["python package: pytest"],
            "steps": ["Reproduce the problem", "Apply the fix", "Verify with a test"],
            "tags": ["llm", "example"],
            "example": "```python\nprint('hello')\n```",
        }
    )


@dataclass
class FakeChatServer:
    """The server; ``url`` is the API base (``http://127.0.0.1:<port>/v1``)."""

    script: deque[Reply] = field(default_factory=deque)
    delay_s: float = 0.0
    responder: Callable[[dict[str, Any]], str] = default_pattern_json
    requests: list[RecordedRequest] = field(default_factory=list)
    max_in_flight: int = 0
    """The most requests the server was answering at once (how parallel its client was)."""
    bind_port: int = 0
    """The port to listen on (0: a free one), e.g. one a client already points at."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def push(self, replies: Iterable[Reply]) -> None:
        """Queue scripted replies."""
        with self._lock:
            self.script.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        return Reply(content=self.responder(body), delay_s=self.delay_s)

    def start(self) -> FakeChatServer:
        """Listen on 127.0.0.1 (``bind_port``, else a free port) in a daemon thread."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with owner._lock:
                    owner.requests.append(RecordedRequest(self.path, dict(self.headers), body))
                    owner._in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner._in_flight)
                try:
                    reply = owner._next(body)
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                finally:
                    with owner._lock:
                        owner._in_flight -= 1
                if reply.body is not None:
                    payload = reply.body.encode()
                else:
                    payload = json.dumps(
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion",
                            "model": body.get("model", "fake"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": reply.content},
                                    "finish_reason": "stop",
                                }
                            ],
                        }
                    ).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        server = ThreadingHTTPServer(("127.0.0.1", self.bind_port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The API base URL to configure."""
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
