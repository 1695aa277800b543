"""Training-loop benchmark (run by hand; figures go in the notes, never into tests).

1. LoRA SFT throughput (examples/s) and wall time for ``--examples`` conversations (one epoch
   by default) with `trainers.train.main`, then the eval time of base vs candidate.
2. One full `run_training_job` on the same data (snapshot -> train -> evaluate -> register ->
   promote -> notify), with its stage durations.
3. Promotion-to-notification latency: from "the candidate is promoted" (just before
   ``registry.activate``) to a local recording vLLM-like HTTP server receiving
   ``load_lora_adapter`` (median and max over ``--swaps`` promotions).

The base model defaults to the tiny local Llama (`trainers.tiny`), on cpu; on a GPU machine:

    python bench/bench_train.py                                  # tiny model, cpu
    python bench/bench_train.py --base-model Qwen/Qwen2.5-Coder-0.5B-Instruct --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from learnstream.core.settings import TrainingSettings, load_settings
from schemas.training import TrainingTrigger, TriggerReason
from trainers.adapters import AdapterStore
from trainers.data import prepare_dataset
from trainers.hotswap import Notice, notify_all
from trainers.metrics import TrainingMetrics
from trainers.pipeline import run_training_job

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


def write_dataset(path: Path, examples: int) -> None:
    """``examples`` chat examples, two per query, in the dataset's JSONL format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(examples):
            q, k = divmod(i, 2)
            topic = TOPICS[q % len(TOPICS)]
            record = {
                "messages": [
                    {"role": "system", "content": "You are a helpful coding assistant."},
                    {"role": "user", "content": f"How do I {topic} in project {q}?"},
                    {
                        "role": "assistant",
                        "content": f"To {topic} in project {q}: first check the current "
                        f"state, then apply the change, then verify it. Variant {k}.",
                    },
                ],
                "metadata": {
                    "pattern_id": f"p{q}",
                    "event_id": f"e{i}",
                    "value_score": 0.8,
                    "source": "ralph",
                    "tags": [],
                    "timestamp": "2026-01-01T00:00:00Z",
                },
            }
            fh.write(json.dumps(record) + "\n")


class Recorder:
    """A vLLM-like server that records when each load_lora_adapter call arrives."""

    def __init__(self) -> None:
        self.loads: list[float] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/load_lora_adapter"):
                    owner.loads.append(time.perf_counter())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """Run the three measurements and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-model", default=None, help="Name or path (default: tiny local).")
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("-v", "--verbose", action="store_true", help="Show training log lines.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    import torch

    from trainers.evaluate import evaluate_adapters
    from trainers.tiny import build_tiny_model
    from trainers.train import TrainConfig
    from trainers.train import main as train

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    base_model = args.base_model or str(build_tiny_model(work / "tiny"))
    recorder = Recorder()
    training = TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        learning_rate=2e-4 if args.base_model else 5e-3,
        min_eval_examples=1,
        vllm_servers=[recorder.url],
    )
    settings = load_settings(data_dir=work / "data", base_model=base_model, training=training)
    write_dataset(settings.dataset_path, args.examples)
    print(f"base model: {base_model}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    # 1. Training throughput on every example (no eval split), then eval time.
    data = prepare_dataset(settings.dataset_path, work / "run", eval_fraction=0.2, seed=0)
    everything = [e.messages for e in data.train + data.eval]
    run = train(
        TrainConfig(
            base_model=base_model,
            output_dir=work / "adapter",
            train=everything,
            settings=training,
        )
    )
    print(
        f"train: {run.examples} examples x {run.epochs:.2f} epoch(s), {run.steps} steps "
        f"(batch {args.batch_size}, device {run.device}{' bf16' if run.bf16 else ''}) in "
        f"{run.duration_s:.2f}s = {run.examples_per_s:.1f} examples/s "
        f"(loss {run.train_loss:.3f})"
    )
    t0 = time.perf_counter()
    evals = evaluate_adapters(
        base_model,
        [e.messages for e in data.eval],
        {"base": None, "candidate": run.adapter_dir},
        training,
    )
    print(
        f"evaluate: {len(data.eval)} examples x 2 models in {time.perf_counter() - t0:.2f}s "
        f"(loss {evals['base'].loss:.3f} -> {evals['candidate'].loss:.3f}, seen in training)"
    )

    # 2. One full job.
    t0 = time.perf_counter()
    result = run_training_job(
        settings,
        TrainingTrigger(trigger_id="bench", base_model=base_model, reasons=[TriggerReason.MANUAL]),
        metrics=TrainingMetrics.on(CollectorRegistry()),
    )
    wall = time.perf_counter() - t0
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.durations_s.items())
    print(f"run_training_job: {result.status} in {wall:.2f}s ({stages})")
    print(f"  {result.reason}")

    # 3. Promotion -> inference server notified.
    registry = AdapterStore.for_settings(settings, base_model)
    version = registry.active_version() or registry.register(
        run.adapter_dir, metrics={}, lineage={}, config={}
    )
    latencies = []
    for _ in range(args.swaps):
        recorder.loads.clear()
        t0 = time.perf_counter()
        registry.activate(version, reason="bench")
        notify_all(
            training,
            Notice(
                base_model=base_model,
                version=version,
                path=str(registry.version_dir(version)),
                lora_name="learnstream",
            ),
        )
        latencies.append((recorder.loads[-1] - t0) * 1000)
    print(
        f"promotion -> server notified (activate + unload + load, {args.swaps} runs): "
        f"median {statistics.median(latencies):.2f} ms, max {max(latencies):.2f} ms"
    )
    recorder.close()


if __name__ == "__main__":
    main()
