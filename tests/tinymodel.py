"""Test helpers for the training loop: the tiny local model and generated datasets."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from trainers.tiny import build_tiny_model

__all__ = ["FAST", "RecordingServer", "build_tiny_model", "dataset_line", "write_dataset"]

# Training settings that train the tiny model a few steps in seconds on a CPU.
FAST = {
    "max_steps": 12,
    "batch_size": 8,
    "learning_rate": 5e-3,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "max_length": 128,
    "device": "cpu",
    "min_eval_examples": 5,
}

TOPICS = (
    "retry the request",
    "fix the failing test",
    "rebase the branch",
    "cache the vector",
    "read the traceback",
    "create the topic",
    "merge the branch",
    "run the linter",
)


def dataset_line(query: str, answer: str, *, pattern_id: str, event_id: str) -> str:
    """One JSONL line in the dataset format (schemas.pattern.DatasetExample)."""
    return json.dumps(
        {
            "messages": [
                {"role": "system", "content": "You are a helpful coding assistant."},
                {"role": "user", "content": query},
                {"role": "assistant", "content": answer},
            ],
            "metadata": {
                "pattern_id": pattern_id,
                "event_id": event_id,
                "value_score": 0.8,
                "source": "ralph",
                "tags": ["test"],
                "timestamp": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
            },
        }
    )


def write_dataset(path: Path, queries: int, per_query: int = 2, *, start: int = 0) -> Path:
    """Append ``queries`` distinct queries with ``per_query`` examples each to ``path``.

    Answers follow one learnable pattern ("To <topic>: step one, step two.") so a few LoRA
    steps lower the eval loss on held-out queries.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for q in range(start, start + queries):
            topic = TOPICS[q % len(TOPICS)]
            for k in range(per_query):
                fh.write(
                    dataset_line(
                        f"How do I {topic} in project {q}?",
                        f"To {topic}: step one, step two. Variant {k}.",
                        pattern_id=f"p{q}",
                        event_id=f"e{q}-{k}",
                    )
                    + "\n"
                )
    return path


class RecordingServer:
    """Records every POST (path, JSON body); answers with scripted status codes per path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.script: dict[str, list[int]] = {}
        self.default = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.calls.append((self.path, body))
                queue = owner.script.get(self.path, [])
                status = queue.pop(0) if queue else owner.default
                payload = b"ok" if status < 400 else b'{"error": "scripted failure"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
