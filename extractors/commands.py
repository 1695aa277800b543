"""What ``learnstream patterns search|top`` and ``dataset validate`` do; the CLI parses options.

Local Qdrant (a folder) admits one process, and a running worker holds it. So a command asks
the worker first (``GET /api/v1/patterns/search`` or ``/top`` on its web port; no model is
loaded in the CLI process) and opens the store itself only when no worker of this store
answers. A worker serving another store (another data directory) is not asked twice: its
``store`` field differs from this process's `store_identity`.
"""

from __future__ import annotations

import socket
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from learnstream.api_client import WorkerAnswer, ask_worker, worker_url
from learnstream.core.errors import ResourceBusyError
from learnstream.core.settings import Settings
from schemas.pattern import Pattern

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from extractors.dataset import Tokenizer
    from extractors.store import PatternStore


def store_identity(settings: Settings) -> str:
    """Which pattern store these settings name: the Qdrant URL, or the local folder."""
    return settings.qdrant.url or str(settings.qdrant_path.resolve())


def _store(settings: Settings, *, load_model: bool) -> tuple[QdrantClient, PatternStore]:
    from extractors.store import PatternStore
    from scorers.embeddings import Embedder
    from scorers.vectors import ensure_collections, qdrant_client

    client = qdrant_client(settings)  # first: a held folder fails before the model loads
    try:
        ensure_collections(client, settings.embedding.dimensions)
        embedder = Embedder(settings.embedding, None)
        if load_model:
            embedder.load()
    except BaseException:
        client.close()
        raise
    return client, PatternStore(client, embedder, merge_threshold=settings.extract.merge_threshold)


def _line(pattern: Pattern, score: float | None = None) -> str:
    head = f"{score:.3f}  " if score is not None else ""
    return (
        f"{head}{pattern.name}  [{', '.join(pattern.tags)}]  confidence {pattern.confidence:.2f}"
        f"  used {pattern.usage_count}  success {pattern.success_rate:.2f}  "
        f"({pattern.extractor}, id {pattern.pattern_id})\n    {pattern.description}"
    )


def _from_worker(
    settings: Settings, path: str, url: str | None
) -> tuple[list[dict[str, Any]] | None, WorkerAnswer]:
    """The worker's ``patterns`` list, or None (with its answer) when this has to go local.

    With an explicit ``url`` the worker is the only source: any failure ends the command.
    """
    answer = ask_worker(settings, path, url)
    if url is not None and not answer.ok:
        raise click.ClickException(
            answer.detail or f"the worker at {answer.url} gave no pattern list"
        )
    if not answer.ok or not isinstance(answer.body.get("patterns"), list):
        return None, answer
    served = answer.body.get("store")
    if url is None and served is not None and served != store_identity(settings):
        return None, WorkerAnswer(
            answer.url,
            0,
            detail=f"the worker at {worker_url(settings, None)} serves another store ({served})",
        )
    return answer.body["patterns"], answer


def _open_locally(
    settings: Settings, answer: WorkerAnswer, *, load_model: bool
) -> tuple[QdrantClient, PatternStore]:
    try:
        return _store(settings, load_model=load_model)
    except ResourceBusyError:
        raise click.ClickException(
            f"the pattern store {settings.qdrant_path} is held by another process (local Qdrant "
            f"admits one) and {answer.detail or 'no worker answered'}; run the command where "
            "that worker's web port is reachable (--url, LEARNSTREAM_WORKER__WEB_PORT), stop "
            "that process, or share a Qdrant server (LEARNSTREAM_QDRANT__URL)"
        ) from None


def search_patterns(
    settings: Settings,
    text: str,
    limit: int,
    echo: Callable[[str], None],
    url: str | None = None,
) -> None:
    """Print the patterns most similar to ``text``: from a running worker, else the store."""
    query = urllib.parse.urlencode({"q": text, "limit": limit})
    found, answer = _from_worker(settings, f"/api/v1/patterns/search?{query}", url)
    if found is not None:
        if not found:
            echo("no patterns yet")
        for hit in found:
            echo(_line(Pattern.model_validate(hit["pattern"]), float(hit["score"])))
        return
    client, store = _open_locally(settings, answer, load_model=True)
    try:
        hits = store.search(text, limit=limit)
        if not hits:
            echo("no patterns yet")
        for scored in hits:
            echo(_line(scored.pattern, scored.score))
    finally:
        client.close()


def top_patterns(
    settings: Settings, limit: int, echo: Callable[[str], None], url: str | None = None
) -> None:
    """Print the most used and trusted patterns: from a running worker, else the store."""
    found, answer = _from_worker(settings, f"/api/v1/patterns/top?limit={limit}", url)
    if found is not None:
        if not found:
            echo("no patterns yet")
        for item in found:
            echo(_line(Pattern.model_validate(item)))
        return
    client, store = _open_locally(settings, answer, load_model=False)  # top embeds nothing
    try:
        patterns = store.top(limit=limit)
        if not patterns:
            echo("no patterns yet")
        for pattern in patterns:
            echo(_line(pattern))
    finally:
        client.close()


# --- dataset validate -------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


def _hub_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (one TCP connect), or None if it can."""
    parsed = urllib.parse.urlsplit(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return str(exc) or type(exc).__name__
    return None


def _from_pretrained(source: str, name: str, *, local: bool) -> Tokenizer:
    from huggingface_hub.utils import logging as hub_logging
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer: Tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except Exception as exc:  # the libraries raise OSError, ValueError, KeyError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"tokenizer {name!r} cannot be loaded: {first}") from None
    return tokenizer


def load_tokenizer(name: str) -> Tokenizer:
    """A tokenizer from a folder, the Hugging Face cache or (when it can be reached) the hub.

    Whatever fails ends the command with one line: no traceback, no library log. With
    ``HF_HUB_OFFLINE`` set, or the hub unreachable, only a folder or the cache is used.
    """
    folder = Path(name).expanduser()
    if folder.exists():
        return _from_pretrained(str(folder), name, local=True)
    if name.startswith(("/", "./", "../", "~")):
        raise click.ClickException(f"tokenizer folder {name} does not exist")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = any(isinstance(try_to_load_from_cache(name, f), str) for f in _TOKENIZER_FILES)
    except Exception:  # not a valid repo id (HFValidationError)
        raise click.ClickException(
            f"tokenizer {name!r} is neither a folder nor a Hugging Face model name"
        ) from None
    if cached:
        return _from_pretrained(name, name, local=True)
    where = f"not a folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise click.ClickException(
            f"tokenizer {name!r}: {where}, and HF_HUB_OFFLINE is set; download it where the hub "
            "is reachable (`hf download NAME`) or give its folder"
        )
    unreachable = _hub_unreachable(constants.ENDPOINT)
    if unreachable is not None:
        raise click.ClickException(
            f"tokenizer {name!r}: {where}, and the hub {constants.ENDPOINT} cannot be reached "
            f"({unreachable}); download it where the hub is reachable or give its folder"
        )
    return _from_pretrained(name, name, local=False)


def validate_dataset(
    settings: Settings,
    tokenizer: str | None,
    max_tokens: int | None,
    echo: Callable[[str], None],
) -> bool:
    """Check the dataset (token lengths with ``tokenizer``); prints the summary, True if ok."""
    from extractors.dataset import validate
    from extractors.stage import dataset_path

    tok = load_tokenizer(tokenizer) if tokenizer else None
    report = validate(dataset_path(settings), tokenizer=tok, max_tokens=max_tokens)
    echo(report.summary())
    return report.ok
