"""Metrics loggers: where a run's metrics go besides ``metrics.jsonl``.

``metrics.jsonl`` is always written. ``--set logger=csv,tensorboard`` adds the loggers of those
names; plugins add more through the ``metactl_register_loggers`` hook (see
``metactl.hookspecs``). A logger is any object with the two methods of :class:`MetricsLogger`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from metactl.errors import UsageError


class MetricsLogger(Protocol):
    """What a logger factory returns."""

    def log(self, record: Mapping[str, Any]) -> None:
        """One metrics record: ``kind`` ("train" or "val"), ``step`` and numbers (``loss``,
        ``accuracy``, ``lr``, ``ci95``...), the same as the line just added to metrics.jsonl."""

    def close(self) -> None:
        """Flush and release files; called once when training stops, however it stops."""


def logger_names(setting: Any) -> list[str]:
    """``"csv,tensorboard"``, ``["csv"]``, ``None`` or ``"none"`` -> the names, in order."""
    if setting is None:
        return []
    parts = setting if isinstance(setting, (list, tuple)) else str(setting).split(",")
    names = [str(part).strip() for part in parts]
    return [name for name in dict.fromkeys(names) if name and name != "none"]


def check_loggers(setting: Any) -> list[str]:
    """The selected logger names, each known; a one-line error for an unknown one."""
    from metactl.plugins import get_loggers

    registry = get_loggers()
    names = logger_names(setting)
    for name in names:
        registry.get(name)
    return names


class LoggerSet:
    """The selected loggers of one run, called together."""

    def __init__(self, loggers: Sequence[MetricsLogger]) -> None:
        self.loggers = list(loggers)

    @classmethod
    def open(cls, setting: Any, run_folder: Path, config: Mapping[str, Any],
             start_step: int) -> LoggerSet:
        from metactl.plugins import get_loggers

        registry = get_loggers()
        opened: list[MetricsLogger] = []
        try:
            for name in check_loggers(setting):
                opened.append(registry.get(name).factory(Path(run_folder), dict(config),
                                                         start_step))
        except BaseException:
            cls(opened).close()
            raise
        return cls(opened)

    def log(self, record: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def missing_extra(package: str, extra: str, what: str) -> UsageError:
    """The error for an optional dependency that is not installed."""
    return UsageError(f"{what} needs the {package} package, which is not installed",
                      f"pip install 'metactl[{extra}]'")
