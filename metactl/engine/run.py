"""A run is a folder: the resolved config, checkpoints, metrics and evaluation results.

```
<run>/config.yaml          the resolved configuration (every setting, after all merging)
<run>/checkpoints/last.pt  model, optimizer and sampler state after the last completed step
<run>/checkpoints/best.pt  the model with the best validation accuracy
<run>/metrics.jsonl        one JSON object per logged step or validation
<run>/evaluation-*.json    results of `metactl evaluate`
<run>/run.json             provenance and status (metactl.engine.record)
<run>/console.log          what the console showed, with times
<run>/.lock                while a process writes the run: which one (see ``RunFolder.writing``)
```
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from metactl.errors import DataError, UsageError
from metactl.fileio import (
    LockHolder,
    atomic_write,
    describe_os_error,
    disk_hint,
    exclusive_lock,
    read_lock_holder,
)

if TYPE_CHECKING:
    from torch import nn

    from metactl.algorithm import Algorithm
    from metactl.engine.device import Placement


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def read_config(self) -> dict[str, Any]:
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise DataError(f"cannot read {self.config_path}: {error}",
                            "the run folder is damaged; train again") from None
        if not isinstance(config, dict) or "algorithm" not in config:
            raise DataError(f"{self.config_path} is not a metactl run config",
                            "the run folder is damaged; train again")
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        write_text_atomic(self.config_path, yaml.safe_dump(config, sort_keys=True))

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @contextmanager
    def writing(self, command: str) -> Iterator[RunFolder]:
        """Be the run's only writer for the block: an exclusive lock that the kernel drops when
        the process dies. A folder this call created is removed again if the block leaves it
        empty (a run that failed before writing anything)."""
        created = [folder for folder in (self.path, *self.path.parents)
                   if not folder.exists()]  # this call makes them, innermost first
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(f"cannot create the run folder {self.path}: "
                            f"{describe_os_error(error)}",
                            disk_hint(error, "choose a writable folder with --out")) from None
        try:
            with exclusive_lock(self.lock_path, command, f"run folder {self.path}"):
                yield self
        finally:
            for folder in created:
                with suppress(OSError):
                    folder.rmdir()  # only when empty

    def holder(self) -> LockHolder | None:
        """The process writing the run now, if any (read from its lock file)."""
        return read_lock_holder(self.lock_path) if self.lock_path.is_file() else None

    def start_metrics(self) -> None:
        """Begin an empty metrics file (a new run never continues an old run's rows)."""
        write_text_atomic(self.metrics, "")

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one JSON line in a single write; a crash mid-write leaves at most a torn last
        line, which :meth:`read_metrics` skips and a resume removes."""
        try:
            with self.metrics.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")
        except OSError as error:
            raise DataError(f"cannot write {self.metrics}: {describe_os_error(error)}",
                            disk_hint(error, "check the run folder's permissions")) from None

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record of ``metrics.jsonl``, in order; torn or garbled lines (a crash
        or a full disk while writing) are skipped."""
        return [record for _, record in self._metric_lines()]

    def _metric_lines(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.metrics.is_file():
            return
        for line in self.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                yield line, record

    def truncate_metrics(self, after_step: int) -> None:
        """Keep the complete records up to ``after_step`` (the checkpoint's step): drop work
        lost since the last checkpoint and any torn line."""
        if not self.metrics.is_file():
            return
        kept = [line for line, record in self._metric_lines() if record["step"] <= after_step]
        write_text_atomic(self.metrics, "".join(line + "\n" for line in kept))

    def model_checkpoint(self) -> Path:
        """The checkpoint to evaluate and predict with: the best one, else the last."""
        for path in (self.best, self.last):
            if path.is_file():
                return path
        raise DataError(f"run {self.path} has no checkpoint yet",
                        f"train it first, or resume it with `metactl train --resume {self.path}`")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "check the run folder's permissions and free space") as temporary:
        temporary.write_text(text, encoding="utf-8")


def open_run(path: str | Path) -> RunFolder:
    """Check that ``path`` is a run folder."""
    run = RunFolder(Path(path))
    if not run.path.is_dir():
        raise UsageError(f"run folder {run.path} does not exist",
                         "pass the folder that `metactl train` printed")
    if not run.config_path.is_file():
        raise UsageError(f"{run.path} is not a metactl run (no config.yaml)",
                         "pass the folder that `metactl train` printed")
    return run


@dataclass
class TrainedModel:
    """A run's algorithm and model, ready to evaluate or predict."""

    run: RunFolder
    config: dict[str, Any]
    algorithm: Algorithm
    model: nn.Module
    image_shape: tuple[int, int, int]
    checkpoint: dict[str, Any]

    def placement(self, device: str | None = None) -> Placement:
        """Where to evaluate or predict: ``device``, else the run's own device setting."""
        from metactl.engine.device import placement_for

        return placement_for({**self.config, "device": device or self.config["device"]},
                             self.algorithm.device)


def load_trained(path: str | Path, device: str | None = None,
                 algorithm: type[Algorithm] | None = None,
                 settings: Mapping[str, Any] | None = None) -> TrainedModel:
    """Rebuild a run's model from its config and best (else last) checkpoint.

    Args:
        algorithm: the run's Algorithm class, for one that is not registered (defined in a
            notebook); default: the registered class of the run's algorithm name.
        settings: evaluation-time overrides of the run's settings (test inner steps, distance,
            eval_episodes...); they must not change the model's shape.
    """
    from metactl.algorithm import ModelSpec
    from metactl.engine.checkpoint import load_checkpoint
    from metactl.engine.device import placement_for
    from metactl.plugins import get_registry

    run = open_run(path)
    config = run.read_config()
    algorithm_class = algorithm or get_registry().get(config["algorithm"])
    if algorithm_class.name != config["algorithm"]:
        raise UsageError(f"{run.path} is a {config['algorithm']} run, not {algorithm_class.name}",
                         "pass the Algorithm class the run was trained with")
    config = with_settings(config, algorithm_class, settings or {})
    checkpoint = load_checkpoint(run.model_checkpoint())
    if checkpoint.get("algorithm") != config["algorithm"]:
        raise DataError(f"checkpoint of {run.path} is for algorithm "
                        f"{checkpoint.get('algorithm')!r}, not {config['algorithm']!r}",
                        "the run folder is damaged; train again")
    instance = algorithm_class(config)
    instance.statistics = dict(checkpoint.get("statistics", {}))
    channels, height, width = (int(v) for v in checkpoint["image_shape"])
    spec = ModelSpec(channels, height, width, int(config["train_way"]),
                     int(checkpoint.get("num_train_classes", 0)),
                     str(checkpoint.get("task", "classification")))
    model = instance.build_model(spec)
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, KeyError) as error:
        hint = ("the run folder is damaged; train again" if not settings else
                f"--set {', '.join(settings)} changes the model; set only what evaluation uses")
        raise DataError(f"checkpoint of {run.path} does not fit the {config['algorithm']} model "
                        f"({str(error).splitlines()[0][:120]})", hint) from None
    placement = placement_for({**config, "device": device or config.get("device", "auto")},
                              instance.device)
    model.to(placement.device).eval()
    statistics = {name: value.to(placement.device) for name, value in instance.statistics.items()}
    instance.statistics = statistics
    return TrainedModel(run, config, instance, model, (channels, height, width), checkpoint)


def with_settings(config: dict[str, Any], algorithm_class: type[Algorithm],
                  settings: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with evaluation-time ``settings`` (keys the algorithm or the engine know)."""
    from metactl.engine.config import known_keys

    allowed = known_keys(algorithm_class.defaults)
    for key in settings:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = (f"did you mean {close[0]!r}?" if close else
                    f"see `metactl plugins info {algorithm_class.name}` for its settings")
            raise UsageError(f"{algorithm_class.name} has no setting {key!r}", hint)
    return {**config, **settings}
