"""``learnstream adapters``: list, show, activate and roll back registered LoRA adapters.

Only click is imported at module level (``learnstream --help`` stays fast and imports no
pydantic); settings come from the root command's context object (anything with a
``settings`` attribute, like ``learnstream.cli.Context``) or, when run standalone, from
``load_settings()``. ``activate`` and ``rollback`` notify the configured inference servers
unless ``--no-notify``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from learnstream.cli_support import command_settings

if TYPE_CHECKING:
    from learnstream.core.settings import Settings
    from trainers.adapters import AdapterStore


def _adapter_store(base_model: str | None) -> tuple[Settings, AdapterStore]:
    """The registry of ``base_model``; unset, of LEARNSTREAM_BASE_MODEL when that is set, else
    of the registry's only base model (a demo run's tiny model), else of the default."""
    from trainers.adapters import AdapterStore

    settings = command_settings()
    if base_model is None and "base_model" not in settings.model_fields_set:
        root = settings.adapters_dir
        models = registered_base_models(root)
        if len(models) == 1:
            base_model = models[0]
    return settings, AdapterStore.for_settings(settings, base_model)


def _version_arg(text: str) -> int:
    from trainers.adapters import AdapterStoreError, parse_version

    try:
        return parse_version(text)
    except AdapterStoreError as exc:
        raise click.BadParameter(str(exc)) from None


def _notify(settings: Settings, registry: AdapterStore, version: int | None) -> None:
    from trainers.hotswap import Notice, notify_all, served_path, summarize

    ts = settings.training
    if not (ts.vllm_servers or ts.webhooks):
        return
    metrics: dict[str, float] = {}
    path = None
    if version is not None:
        info = registry.show(version)
        metrics = {k: float(v) for k, v in info.metrics.items() if isinstance(v, int | float)}
        path = served_path(ts, registry.root, info.path)
    outcomes = notify_all(
        ts,
        Notice(
            base_model=registry.base_model,
            version=version,
            path=path,
            lora_name=ts.lora_name,
            metrics=metrics,
        ),
    )
    click.echo(summarize(outcomes))
    if any(not o.ok for o in outcomes):
        raise click.ClickException(
            "the registry was updated but some inference servers were not notified"
        )


base_model_option = click.option(
    "--base-model",
    default=None,
    help="Base model name or path (default: LEARNSTREAM_BASE_MODEL, else the registry's only "
    "base model).",
)
notify_option = click.option(
    "--notify/--no-notify",
    default=True,
    show_default=True,
    help="Tell the configured inference servers (vLLM, webhooks).",
)


@click.group()
def adapters() -> None:
    """Registered LoRA adapters: list, show, activate, roll back."""


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def registered_base_models(root: Path) -> list[str]:
    """The base models with a folder under the registry ``root``, by name.

    A folder's base model is its manifest's, else that of any version's training config.
    """
    found: set[str] = set()
    if not root.is_dir():
        return []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        candidates = [folder / "manifest.json", *sorted(folder.glob("v*/training_config.json"))]
        for path in candidates:
            try:
                name = json.loads(path.read_text(encoding="utf-8")).get("base_model")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(name, str) and name:
                found.add(name)
                break
    return sorted(found)


@adapters.command("list")
@click.option(
    "--base-model",
    default=None,
    help="Only this base model's adapters (default: every base model in the registry).",
)
def list_adapters(base_model: str | None) -> None:
    """List every base model's adapter versions (* marks the active one)."""
    from trainers.adapters import AdapterStore

    settings = command_settings()
    if base_model is not None:
        _print_versions(AdapterStore.for_settings(settings, base_model))
        return
    root = settings.adapters_dir
    models = registered_base_models(root)
    if not models:
        click.echo(f"no adapters registered in {root}")
        return
    for number, name in enumerate(models):
        if number:
            click.echo("")
        _print_versions(AdapterStore(root, name))


def _print_versions(registry: AdapterStore) -> None:
    versions = registry.list_versions()
    click.echo(f"base model {registry.base_model} ({registry.dir})")
    if not versions:
        click.echo("no adapters registered")
        return
    click.echo(
        f"  {'VERSION':8} {'CREATED':20} {'CAND_LOSS':>9} {'PREV_LOSS':>9} "
        f"{'GAIN':>7} {'TRAIN':>6} {'EVAL':>5} DECISION"
    )
    for info in versions:
        m, lineage = info.metrics, info.lineage
        decision = info.decision or {}
        verdict = "-"
        if "promote" in decision:
            verdict = "promoted" if decision["promote"] else "rejected"
        gain = decision.get("relative_improvement")
        click.echo(
            f"{'*' if info.active else ' '} {info.name:8} {info.created_at[:19]:20} "
            f"{_fmt(m.get('eval_loss_candidate')):>9} {_fmt(m.get('eval_loss_active')):>9} "
            f"{_fmt(gain, '+.2%'):>7} {lineage.get('train_examples', '-')!s:>6} "
            f"{lineage.get('eval_examples', '-')!s:>5} {verdict}"
        )
    active = registry.active_version()
    click.echo(f"active: {'none (base model)' if active is None else f'v{active:04d}'}")


@adapters.command("show")
@click.argument("version", required=False)
@base_model_option
def show_adapter(version: str | None, base_model: str | None) -> None:
    """Print one version (default: the active one) as JSON: metrics, lineage, config, decision."""
    from trainers.adapters import AdapterStoreError

    _, registry = _adapter_store(base_model)
    try:
        info = registry.show(None if version is None else _version_arg(version))
    except AdapterStoreError as exc:
        raise click.ClickException(str(exc)) from None
    lineage = dict(info.lineage)
    for key in ("pattern_ids", "event_ids", "eval_event_ids"):
        if isinstance(lineage.get(key), list):
            lineage[f"{key}_count"] = len(lineage[key])
    click.echo(
        json.dumps(
            {
                "base_model": registry.base_model,
                "version": info.version,
                "path": str(info.path),
                "active": info.active,
                "created_at": info.created_at,
                "metrics": info.metrics,
                "decision": info.decision,
                "lineage": lineage,
                "config": info.config,
            },
            indent=2,
            default=str,
        )
    )


@adapters.command("activate")
@click.argument("version")
@base_model_option
@notify_option
def activate_adapter(version: str, base_model: str | None, notify: bool) -> None:
    """Make VERSION (3 or v0003) the active adapter."""
    from trainers.adapters import AdapterStoreError, version_name

    settings, registry = _adapter_store(base_model)
    number = _version_arg(version)
    try:
        previous = registry.activate(number, reason="manual (CLI)")
    except AdapterStoreError as exc:
        raise click.ClickException(str(exc)) from None
    was = "none" if previous is None else version_name(previous)
    click.echo(f"{registry.base_model}: active {version_name(number)} (was {was})")
    if notify:
        _notify(settings, registry, number)


@adapters.command("rollback")
@base_model_option
@notify_option
def rollback_adapter(base_model: str | None, notify: bool) -> None:
    """Re-activate the version that was active before the current one."""
    from trainers.adapters import AdapterStoreError, version_name

    settings, registry = _adapter_store(base_model)
    current = registry.active_version()
    try:
        new = registry.rollback(reason="manual rollback (CLI)")
    except AdapterStoreError as exc:
        raise click.ClickException(str(exc)) from None
    now = "none (base model)" if new is None else version_name(new)
    was = "none" if current is None else version_name(current)
    click.echo(f"{registry.base_model}: rolled back to {now} (was {was})")
    if notify:
        _notify(settings, registry, new)
