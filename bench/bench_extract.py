"""Extraction stage benchmark (run by hand; figures go in the notes, never into tests).

1. Patterns/s through `ExtractionStage.process` with the heuristic extractor (the example
   telemetry's closing events, repeated with varied queries; real embedding model, Qdrant
   local mode, JSONL dataset with fsync per batch).
2. Patterns/s with a simulated LLM (a loopback chat-completions server sleeping ``--delay``
   seconds per call) at concurrency 1, 2, 4, 8.
3. Bytes stored per learned pattern: Qdrant payload (JSON) + vector (float32) + dataset line,
   and the payload of a saturated pattern (every bounded list full, longest example).

    python bench/bench_extract.py [--n 400] [--batch 32] [--llm-n 16] [--delay 1.0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from qdrant_client import QdrantClient

from extractors.fakellm import FakeChatServer
from extractors.patterns import (
    MAX_EXAMPLE_CHARS,
    MAX_PREREQUISITES,
    MAX_SOURCE_EVENT_IDS,
    MAX_STEPS,
    MAX_TAGS,
)
from extractors.stage import ExtractionStage, dataset_path
from extractors.store import MAX_FEEDBACK_IDS, feedback_marker, pattern_payload
from learnstream.core.settings import Settings, load_settings
from schemas.interaction import ScoredInteraction
from schemas.parsing import parse_event
from schemas.pattern import Pattern
from scorers.embeddings import Embedder
from scorers.normalize import normalize
from scorers.vectors import PATTERNS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
VARIANTS = [
    "",
    " in production",
    " on a laptop",
    " for a CI job",
    " with minimal downtime",
    " step by step",
    " without extra dependencies",
    " for a large team",
]


def example_candidates() -> list[ScoredInteraction]:
    """The example telemetry's scorable events with a query and a response."""
    out = []
    for source in ("aidb", "ralph", "hybrid", "vscode"):
        for n, line in enumerate((EXAMPLES / f"{source}-events.jsonl").read_text().splitlines()):
            event = parse_event(source, line.encode())
            if event.event_id is None:
                event = event.model_copy(update={"event_id": f"{source}-{n}"})
            i = normalize(event)
            if i.scorable and i.query and i.response:
                out.append(ScoredInteraction(interaction=i, score=0.8, high_value=True))
    return out


def candidates(n: int) -> list[ScoredInteraction]:
    """``n`` candidates: the examples with unique event ids and varied queries."""
    base = example_candidates()
    out = []
    for k in range(n):
        c = base[k % len(base)]
        round_ = k // len(base)
        suffix = VARIANTS[round_ % len(VARIANTS)] + (f" (#{round_})" if round_ >= 8 else "")
        i = c.interaction.model_copy(
            update={"event_id": f"bench-{k}", "query": (c.interaction.query or "") + suffix}
        )
        out.append(c.model_copy(update={"interaction": i}))
    return out


def stage_for(root: Path, embedder: Embedder, **extract: Any) -> tuple[ExtractionStage, Settings]:
    """A fresh stage under ``root``."""
    settings = load_settings(data_dir=root, extract=extract)
    client = QdrantClient(path=str(root / "qdrant"))
    return ExtractionStage.create(settings, embedder, client, CollectorRegistry()), settings


def run(
    stage: ExtractionStage, batch: list[ScoredInteraction], size: int
) -> tuple[float, dict[str, int]]:
    """Seconds to process ``batch`` in batches of ``size``, and the statuses."""
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    for k in range(0, len(batch), size):
        for r in stage.process(batch[k : k + size]):
            statuses[r.status] = statuses.get(r.status, 0) + 1
    return time.perf_counter() - started, statuses


def bytes_per_pattern(stage: ExtractionStage, settings: Settings) -> dict[str, float]:
    """Average stored bytes per pattern: payload JSON, vector, dataset line."""
    client = stage.store.client
    payload_bytes = 0
    points = 0
    offset: Any = None
    while True:
        page, offset = client.scroll(PATTERNS, limit=256, offset=offset, with_payload=True)
        for p in page:
            payload_bytes += len(json.dumps(p.payload, separators=(",", ":")).encode())
            points += 1
        if offset is None:
            break
    path = dataset_path(settings)
    lines = max(1, stage.dataset.lines)
    vector = stage.embedder.dimensions * 4
    payload = payload_bytes / max(1, points)
    line = path.stat().st_size / lines
    return {
        "patterns": points,
        "dataset_lines": stage.dataset.lines,
        "payload_bytes": round(payload),
        "vector_bytes": vector,
        "dataset_line_bytes": round(line),
        "total_bytes": round(payload + vector + line),
        "worst_case_payload_bytes": worst_case_payload_bytes(),
    }


def worst_case_payload_bytes() -> int:
    """Payload bytes of a saturated pattern: every list at its cap, the longest example."""
    ids = [str(uuid.uuid4()) for _ in range(MAX_SOURCE_EVENT_IDS)]
    p = Pattern(
        pattern_id=str(uuid.uuid4()),
        name="n" * 80,
        description="d" * 400,
        prerequisites=["python package: something"] * MAX_PREREQUISITES,
        steps=["s" * 300] * MAX_STEPS,
        tags=["t" * 12] * MAX_TAGS,
        example="x" * MAX_EXAMPLE_CHARS,
        source_query="q" * 300,
        source_event_ids=ids,
    )
    markers = [feedback_marker(str(k)) for k in range(MAX_FEEDBACK_IDS)]
    return len(json.dumps(pattern_payload(p, markers), separators=(",", ":")).encode())


def distinct(request: dict[str, Any]) -> str:
    """A simulated LLM answer naming the request."""
    text = request["messages"][-1]["content"]
    query = text.split("## Request", 1)[-1].strip().splitlines()[0][:120]
    return json.dumps(
        {
            "name": query[:80],
            "description": f"How to approach: {query}",
            "prerequisites": [],
            "steps": ["Read the request", "Apply the documented fix", "Verify it"],
            "tags": ["bench"],
            "example": None,
        }
    )


def main() -> None:
    """Run the three measurements and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=400, help="candidates for the heuristic run")
    ap.add_argument("--batch", type=int, default=32, help="candidates per process() call")
    ap.add_argument("--llm-n", type=int, default=16, help="candidates per LLM run")
    ap.add_argument("--delay", type=float, default=1.0, help="simulated LLM seconds per call")
    args = ap.parse_args()

    settings = load_settings()
    embedder = Embedder(settings.embedding, CollectorRegistry())
    t = time.perf_counter()
    embedder.load()
    print(f"embedding model loaded in {time.perf_counter() - t:.1f}s")
    results: dict[str, Any] = {}

    with tempfile.TemporaryDirectory() as tmp:
        stage, s = stage_for(Path(tmp) / "heuristic", embedder)
        batch = candidates(args.n)
        seconds, statuses = run(stage, batch, args.batch)
        results["heuristic"] = {
            "candidates": len(batch),
            "seconds": round(seconds, 2),
            "patterns_per_s": round(len(batch) / seconds, 1),
            "statuses": statuses,
        }
        print(
            f"heuristic: {len(batch)} candidates in {seconds:.2f}s = "
            f"{len(batch) / seconds:.1f}/s {statuses}"
        )
        results["bytes"] = bytes_per_pattern(stage, s)
        print(f"bytes per pattern: {results['bytes']}")
        stage.close()
        stage.store.client.close()

        results["llm"] = []
        with FakeChatServer(delay_s=args.delay, responder=distinct) as llm:
            for concurrency in (1, 2, 4, 8):
                stage, _ = stage_for(
                    Path(tmp) / f"llm-{concurrency}",
                    embedder,
                    llm_base_url=llm.url,
                    concurrency=concurrency,
                    timeout_s=max(10.0, args.delay * 5),
                )
                batch = candidates(args.llm_n)
                seconds, statuses = run(stage, batch, len(batch))
                row = {
                    "concurrency": concurrency,
                    "candidates": len(batch),
                    "seconds": round(seconds, 2),
                    "patterns_per_s": round(len(batch) / seconds, 2),
                    "statuses": statuses,
                }
                results["llm"].append(row)
                print(
                    f"llm {args.delay}s/call, concurrency {concurrency}: {len(batch)} in "
                    f"{seconds:.2f}s = {len(batch) / seconds:.2f}/s {statuses}"
                )
                stage.close()
                stage.store.client.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
