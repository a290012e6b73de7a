"""Figures drawn with matplotlib, an optional extra (``pip install 'metactl[plot]'``).

Figures are built with ``matplotlib.figure.Figure`` directly, never through pyplot, so that
plotting changes no process-wide state (no backend switch, no global figure list).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metactl.fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    color: tuple[int, int, int]
    markers: bool = False  # draw points instead of a line


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure; a one-line error saying how to install matplotlib when it is not."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from metactl.loggers import missing_extra

        raise missing_extra("matplotlib", "plot", "plotting") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(figure: Figure, path: Path, hint: str = "choose a writable output path") -> Path:
    """Write ``figure`` as a PNG, atomically."""
    with atomic_write(path, hint) as temporary:
        figure.savefig(temporary, format="png")
    return Path(path)


def line_plot(series: list[Series], path: Path, title: str = "", xlabel: str = "x",
              ylabel: str = "y") -> Path:
    """Draw ``series`` on shared axes with a legend, axis values and labels; write a PNG."""
    figure = new_figure(7.2, 4.2)
    axes = figure.add_subplot()
    for item in series:
        color = tuple(channel / 255 for channel in item.color)
        if item.markers:
            axes.plot(item.xs, item.ys, "o", color=color, label=item.label, markersize=6)
        else:
            axes.plot(item.xs, item.ys, "-", color=color, label=item.label, linewidth=1.8)
    axes.axhline(0, color="0.85", linewidth=0.8, zorder=0)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return save_figure(figure, path, "choose a writable path for --plot")
