"""``metactl plugins``: the algorithms that plugins registered, and the plugins that broke."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from metactl.cli.common import print_json

if TYPE_CHECKING:
    from metactl.plugins import PluginFailure, RegisteredAlgorithm

app = typer.Typer(help="List the installed algorithm plugins and show what each accepts.",
                  no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("list")
def list_command(as_json: JsonOption = False):
    """Show every registered algorithm and every plugin that failed to load."""
    from metactl.plugins import load_plugins

    plugins = load_plugins()
    entries = plugins.registry.entries()
    if as_json:
        print_json({"algorithms": [_entry_summary(entry) for entry in entries],
                    "failures": [_failure_json(failure) for failure in plugins.failures]})
        return
    if not entries:
        typer.echo("No algorithms are installed.")
    name_width = max((len(entry.algorithm.name) for entry in entries), default=0)
    for entry in entries:
        algorithm = entry.algorithm
        typer.echo(f"{algorithm.name:<{name_width}}  {algorithm.family:<12}  "
                   f"{algorithm.summary}  [{entry.distribution}]")
    if plugins.failures:
        typer.echo("\nBroken plugins (their algorithms are unavailable):")
        for failure in plugins.failures:
            typer.echo(f"  {failure.plugin} [{failure.distribution}]: {failure.error}")


@app.command()
def info(name: Annotated[str, typer.Argument(help="Algorithm name.")],
         as_json: JsonOption = False):
    """Show an algorithm's paper, device settings, hyperparameters and engine settings."""
    from metactl.engine.config import ENGINE_DEFAULTS, ENGINE_HELP
    from metactl.plugins import get_registry

    entry = get_registry().entry(name)
    details = _entry_details(entry, ENGINE_DEFAULTS, ENGINE_HELP)
    if as_json:
        print_json(details)
        return
    _print_details(details)


def _entry_summary(entry: RegisteredAlgorithm) -> dict[str, str]:
    algorithm = entry.algorithm
    return {"name": algorithm.name, "family": algorithm.family, "summary": algorithm.summary,
            "plugin": entry.plugin, "distribution": entry.distribution}


def _failure_json(failure: PluginFailure) -> dict[str, str]:
    return {"plugin": failure.plugin, "distribution": failure.distribution,
            "error": failure.error}


def _entry_details(entry: RegisteredAlgorithm, engine_defaults: Mapping[str, Any],
                   engine_help: Mapping[str, str]) -> dict[str, Any]:
    """Everything ``info`` shows, as plain data.

    ``defaults`` of each setting map a defaults key (``"*"``, ``"omniglot"``,
    ``"omniglot/1-shot"``...) to its value; for engine settings, ``"engine"`` holds the
    engine's own default, which any algorithm entry overrides.
    """
    from dataclasses import asdict

    algorithm = entry.algorithm
    hyperparameters = {}
    engine = {key: {"defaults": {"engine": value}, "help": engine_help.get(key, "")}
              for key, value in engine_defaults.items()}
    for setting, values in algorithm.defaults.items():
        for key, value in values.items():
            target = engine if key in engine else hyperparameters
            target.setdefault(key, {"defaults": {},
                                    "help": algorithm.hyperparameter_help.get(key, "")})
            target[key]["defaults"][setting] = value
    for key, text in algorithm.hyperparameter_help.items():
        hyperparameters.setdefault(key, {"defaults": {}, "help": text})
    return {**_entry_summary(entry), "paper": algorithm.paper,
            "paper_results": [asdict(row) for row in algorithm.paper_results],
            "adapts_with_gradients": algorithm.adapts_with_gradients,
            "device": asdict(algorithm.device),
            "hyperparameters": hyperparameters, "engine_settings": engine}


def _print_details(details: dict[str, Any]) -> None:
    typer.echo(f"{details['name']} ({details['family']}): {details['summary']}")
    typer.echo(f"  paper:    {details['paper'] or '-'}")
    for dataset, figures in _paper_figures(details["paper_results"]).items():
        typer.echo(f"  results:  {dataset}: {figures}")
    typer.echo(f"  package:  {details['distribution']} (entry point {details['plugin']})")
    typer.echo(f"  device:   {_device_line(details['device'])}")
    typer.echo("\nHyperparameters (set with --set KEY=VALUE or a --config file):")
    _print_settings(details["hyperparameters"])
    typer.echo("\nEngine settings (the algorithm's defaults override the engine's):")
    _print_settings(details["engine_settings"])


def _paper_figures(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The paper's figures per dataset and source: ``{"omniglot (Table 1)": "5w1s 98.8, ..."}``."""
    figures: dict[str, list[str]] = {}
    for row in rows:
        interval = f" ± {row['ci95']}" if row["ci95"] is not None else ""
        where = f"{row['dataset']} ({row['source']})" if row["source"] else row["dataset"]
        figures.setdefault(where, []).append(
            f"{row['way']}w{row['shot']}s {row['accuracy']}{interval}")
    return {where: ", ".join(texts) for where, texts in figures.items()}


def _device_line(device: Mapping[str, Any]) -> str:
    return (f"prefers {', '.join(device['preferred'])}; "
            f"mixed precision {device['mixed_precision'] or 'off'}; "
            f"channels-last {_on_off(device['channels_last'])}; "
            f"compile {_on_off(device['compile'])}; "
            f"deterministic {_on_off(device['deterministic'])}; "
            f"CUDA graphs {_on_off(device.get('cuda_graphs', False))}")


def _on_off(flag: bool | str) -> str:
    """``"auto"`` (chosen per device at run time) stays as it is."""
    return flag if flag == "auto" else "on" if flag else "off"


def _print_settings(settings: Mapping[str, Mapping[str, Any]]) -> None:
    if not settings:
        typer.echo("  (none)")
        return
    rows = [(key, _defaults_cell(entry["defaults"]), entry["help"])
            for key, entry in sorted(settings.items())]
    key_width = max(len(key) for key, _, _ in rows)
    value_width = min(max(len(value) for _, value, _ in rows), 40)
    for key, value, help_text in rows:
        typer.echo(f"  {key:<{key_width}}  {value:<{value_width}}  {help_text}".rstrip())


def _defaults_cell(defaults: Mapping[str, Any]) -> str:
    """``{"engine": 1.0, "*": 0.5, "omniglot": 0.1}`` -> ``0.5; omniglot: 0.1``."""
    general = [_value(defaults[key]) for key in ("*", "engine") if key in defaults][:1]
    specific = [f"{setting}: {_value(value)}" for setting, value in defaults.items()
                if setting not in ("engine", "*")]
    return "; ".join(general + specific) or "-"


def _value(value: Any) -> str:
    return "-" if value is None else str(value)
