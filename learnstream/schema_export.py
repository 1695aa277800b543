"""JSON Schema export for every event model and record."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel


def export_schemas(directory: Path) -> list[Path]:
    """Write ``events/<source>/<event_type>.schema.json`` and ``<Record>.schema.json`` files."""
    from schemas import CORE_MODELS, EVENT_MODELS

    written: list[Path] = []

    def write(path: Path, model: type[BaseModel]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        written.append(path)

    for source, models in EVENT_MODELS.items():
        for event_type, model in sorted(models.items()):
            write(directory / "events" / source.value / f"{event_type}.schema.json", model)
    for record in CORE_MODELS:
        write(directory / f"{record.__name__}.schema.json", record)
    index = {
        "events": {s.value: sorted(m) for s, m in EVENT_MODELS.items()},
        "records": [r.__name__ for r in CORE_MODELS],
    }
    (directory / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return written
