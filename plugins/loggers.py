"""The built-in metrics loggers, registered like a third party's: ``csv`` and ``tensorboard``.

``--set logger=csv`` writes ``metrics-train.csv`` and ``metrics-val.csv`` beside
``metrics.jsonl``, one row per record; ``--set logger=tensorboard`` writes TensorBoard event
files under ``tensorboard/`` (``tensorboard --logdir runs``), one scalar per number, tagged
``train/loss``, ``val/accuracy``... Both pick up a resumed run where its checkpoint left off.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metactl import hookimpl

if TYPE_CHECKING:
    from metactl.plugins import LoggerRegistry

NOT_SCALARS = ("kind", "step")


def _records(metrics: Path, kind: str) -> list[dict[str, Any]]:
    if not metrics.is_file():
        return []
    records = (json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()
               if line.strip())
    return [record for record in records if record.get("kind") == kind]


class CsvLogger:
    """One CSV file per kind of record, rebuilt from ``metrics.jsonl`` when it opens (so a
    resumed run's CSV drops the same records as its JSON lines) and whenever a record brings a
    column the file lacks."""

    def __init__(self, run_folder: Path) -> None:
        self.folder = run_folder
        self.columns: dict[str, list[str]] = {}
        for kind in ("train", "val"):
            self._rewrite(kind)

    def path(self, kind: str) -> Path:
        return self.folder / f"metrics-{kind}.csv"

    def _rewrite(self, kind: str, extra: Mapping[str, Any] | None = None) -> None:
        """Write the kind's file again from the JSON lines; ``extra`` is a record that may not
        have reached them."""
        from metactl.engine.run import write_text_atomic

        records = _records(self.folder / "metrics.jsonl", kind)
        if extra is not None and (not records or records[-1] != dict(extra)):
            records.append(dict(extra))
        columns = list(dict.fromkeys(key for record in records for key in record
                                     if key != "kind"))
        self.columns[kind] = columns
        if not records:
            self.path(kind).unlink(missing_ok=True)
            return
        lines = [",".join(columns)] + [_row(record, columns) for record in records]
        write_text_atomic(self.path(kind), "\n".join(lines) + "\n")

    def log(self, record: Mapping[str, Any]) -> None:
        kind = str(record.get("kind", "train"))
        columns = self.columns.get(kind, [])
        if not self.path(kind).is_file() or any(key not in columns for key in record
                                                if key != "kind"):
            self._rewrite(kind, record)
            return
        with self.path(kind).open("a", encoding="utf-8") as stream:
            stream.write(_row(record, columns) + "\n")

    def close(self) -> None:
        pass


def _row(record: Mapping[str, Any], columns: list[str]) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(
        ["" if record.get(key) is None else record[key] for key in columns])
    return buffer.getvalue()


def open_csv(run_folder: Path, config: Mapping[str, Any], start_step: int) -> CsvLogger:
    return CsvLogger(run_folder)


class TensorBoardLogger:
    """Scalars in TensorBoard event files under ``<run>/tensorboard``."""

    def __init__(self, run_folder: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a resumed run is about to write again.
        self.writer = SummaryWriter(str(run_folder / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)

    def log(self, record: Mapping[str, Any]) -> None:
        kind, step = record.get("kind", "train"), int(record["step"])
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(
                    value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        if kind == "val":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(run_folder: Path, config: Mapping[str, Any],
                     start_step: int) -> TensorBoardLogger:
    if importlib.util.find_spec("tensorboard") is None:
        from metactl.loggers import missing_extra

        raise missing_extra("tensorboard", "tensorboard", "--set logger=tensorboard")
    return TensorBoardLogger(run_folder, start_step)


@hookimpl
def metactl_register_loggers(registry: LoggerRegistry) -> None:
    registry.add("csv", open_csv)
    registry.add("tensorboard", open_tensorboard)
