"""``metactl runs plot``: learning curves of one or many runs on shared axes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metactl.engine.plot import new_figure, save_figure
from metactl.engine.runs import read_metrics
from metactl.errors import UsageError


def _column(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    chosen = [r for r in records if r.get(key) is not None]
    return [r["step"] for r in chosen], [r[key] for r in chosen]


def plot_curves(folders: Sequence[Path], output: Path, labels: Sequence[str] | None = None
                ) -> Path:
    """Three panels against meta-training steps: training loss; training and validation
    accuracy in percent, validation with its 95% CI band (validation error for regression
    runs); the learning rate. One colour per run, in a shared legend."""
    runs = [(Path(folder), read_metrics(folder)) for folder in folders]
    empty = [str(folder) for folder, metrics in runs if not metrics]
    if empty:
        raise UsageError(f"no metrics to plot in {', '.join(empty)}",
                         "train the run first (metrics.jsonl is written as it trains)")
    figure = new_figure(12, 3.8)
    loss_axes, score_axes, lr_axes = figure.subplots(1, 3)
    names = list(labels) if labels else [folder.name for folder, _ in runs]
    regression = all(any("mse" in r for r in m if r.get("kind") == "val") for _, m in runs)
    for index, ((_, metrics), name) in enumerate(zip(runs, names, strict=True)):
        color = f"C{index % 10}"
        train = [r for r in metrics if r.get("kind") == "train"]
        val = [r for r in metrics if r.get("kind") == "val"]
        loss_axes.plot(*_column(train, "loss"), color=color, linewidth=1.2, label=name)
        _plot_scores(score_axes, train, val, color, name, regression)
        lr_axes.plot(*_column(train, "lr"), color=color, linewidth=1.2, label=name)
    loss_axes.set(title="Training loss", xlabel="meta-training step", ylabel="loss")
    score_axes.set(title="Validation error (MSE)" if regression else "Accuracy",
                   xlabel="meta-training step",
                   ylabel="mean squared error" if regression else "accuracy (%)")
    lr_axes.set(title="Learning rate", xlabel="meta-training step", ylabel="learning rate")
    for axes in (loss_axes, score_axes, lr_axes):
        axes.grid(alpha=0.3)
    score_axes.legend(fontsize="small", loc="best")
    return save_figure(figure, output, "choose a writable path for -o")


def _plot_scores(axes, train: list[dict[str, Any]], val: list[dict[str, Any]], color: str,
                 name: str, regression: bool) -> None:
    key, scale = ("mse", 1.0) if regression else ("accuracy", 100.0)
    if not regression:
        steps, values = _column(train, "accuracy")
        axes.plot(steps, [scale * v for v in values], color=color, alpha=0.35, linewidth=1,
                  label=f"{name} (training)")
    steps, values = _column(val, key)
    if not steps:
        return
    means = [scale * v for v in values]
    half = [scale * (r.get("ci95") or 0.0) for r in val if r.get(key) is not None]
    axes.plot(steps, means, color=color, linewidth=2, marker="o", markersize=3,
              label=f"{name} (validation, 95% CI)")
    axes.fill_between(steps, [m - h for m, h in zip(means, half, strict=True)],
                      [m + h for m, h in zip(means, half, strict=True)], color=color, alpha=0.2)
