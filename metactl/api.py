"""The Python API: what the command line does, as functions a notebook or script can call.

```python
import metactl

run = metactl.train("prototypical", way=5, shot=1, steps=200, out="runs/proto")
result = metactl.evaluate(run, episodes=500)            # an EvaluationResult
print(result.describe(), run.best_validation)
predictions = metactl.predict(run, "support/", ["queries/"])
again = metactl.load_run("runs/proto")
```

The algorithm may be a registered name, an :class:`~metactl.algorithm.Algorithm` subclass that
no plugin registered (defined in a notebook, say) or an instance of one, whose ``hparams``
become settings. Settings are keyword arguments with the names ``--set`` takes. Importing
metactl or calling these functions changes nothing process-wide; ``tune_memory=True`` asks for
the allocator tuning that the command line applies (glibc keeps freed memory between steps).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metactl.errors import UsageError

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm
    from metactl.engine.evaluator import EvaluationResult
    from metactl.engine.predictor import Prediction
    from metactl.engine.run import TrainedModel

@dataclass
class Run:
    """A run folder, read back: its settings, provenance, metrics and evaluations.

    Attributes:
        path: the run folder.
        config: every resolved setting (config.yaml).
        algorithm: the Algorithm class it was trained with, when it is not a registered one.
    """

    path: Path
    config: dict[str, Any]
    algorithm: type[Algorithm] | None = field(default=None, repr=False)

    @property
    def record(self) -> dict[str, Any]:
        """run.json: versions, git commits, device, host, command, times, status."""
        from metactl.engine.record import read_record

        return read_record(self.path)

    @property
    def status(self) -> str:
        return self.record.get("status", "unknown")

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl (``kind`` "train" or "val", ``step``, numbers)."""
        from metactl.engine.runs import read_metrics

        return read_metrics(self.path)

    @property
    def evaluations(self) -> dict[str, dict[str, Any]]:
        """The saved evaluations, by file name (``evaluation-test-5way-1shot``...)."""
        from metactl.engine.runs import read_evaluations

        return read_evaluations(self.path)

    @property
    def best_validation(self) -> dict[str, Any] | None:
        """``{"metric", "mean", "ci95", "step"}`` of the best validation."""
        from metactl.engine.runs import best_validation

        return best_validation(self.metrics)

    def evaluate(self, **options: Any) -> EvaluationResult:
        """:func:`evaluate` of this run."""
        return evaluate(self, **options)

    def predict(self, support: str | Path, queries: Sequence[str | Path], **options: Any
                ) -> list[Prediction]:
        """:func:`predict` with this run."""
        return predict(self, support, queries, **options)

    def load_model(self, device: str | None = None) -> TrainedModel:
        """The trained algorithm and model (best checkpoint), ready to call."""
        from metactl.engine.run import load_trained

        return load_trained(self.path, device, algorithm=self.algorithm)


def load_run(path: str | Path, algorithm: type[Algorithm] | None = None) -> Run:
    """Read a run folder; pass ``algorithm`` for a run of an unregistered Algorithm class."""
    from metactl.engine.run import open_run

    folder = open_run(path)
    return Run(folder.path, folder.read_config(), algorithm)


def _algorithm_class(algorithm: Any) -> tuple[type[Algorithm], dict[str, Any]]:
    """The class behind a name, class or instance, and the instance's settings."""
    from metactl.algorithm import Algorithm
    from metactl.plugins import _check_algorithm, get_registry

    if isinstance(algorithm, str):
        return get_registry().get(algorithm), {}
    if isinstance(algorithm, Algorithm):
        return type(algorithm), dict(algorithm.hparams)
    if isinstance(algorithm, type) and issubclass(algorithm, Algorithm):
        _check_algorithm(algorithm)
        return algorithm, {}
    raise UsageError(f"{algorithm!r} is not an algorithm",
                     "pass a name (see `metactl plugins list`), an Algorithm subclass or an "
                     "instance of one")


def _reporter(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def train(algorithm: Any, *, out: str | Path | None = None, steps: int | None = None,
          resume: str | Path | None = None, config_file: str | Path | None = None,
          root: str | Path | None = None, mirror: str | None = None, progress: bool = True,
          quiet: bool = False, tune_memory: bool = False, **settings: Any) -> Run:
    """Meta-train ``algorithm`` and return the run.

    Args:
        algorithm: a registered name, an Algorithm subclass or an instance of one; None
            with ``resume`` (a registered algorithm's run).
        out: the run folder (default ``runs/<algorithm>-<dataset>-...``).
        steps: meta-training steps (instead of ``episodes`` = steps x meta_batch).
        resume: a run folder to continue; only ``episodes``/``steps`` and ``logger`` may change.
        config_file: a YAML file of settings, applied before ``settings``.
        root, mirror: where the data lives and where to fetch it from (as ``--root``,
            ``--mirror``).
        progress: a progress bar in a terminal, or in Jupyter (lines without ipywidgets).
        quiet: print no messages (console.log still records them).
        tune_memory: apply the command line's allocator tuning to this process.
        settings: any setting, as ``--set`` takes it: ``way=5, shot=1, lr=1e-3,
            logger="csv"``...
    """
    from metactl.engine.config import load_config_file
    from metactl.engine.session import training_config
    from metactl.engine.trainer import train as train_run

    if tune_memory:
        from metactl.engine.device import keep_freed_memory

        keep_freed_memory()
    values = {**(load_config_file(Path(config_file)) if config_file else {}), **settings}
    algorithm_class, own = _algorithm_class(algorithm) if algorithm is not None else (None, {})
    if algorithm_class is not None:
        values = {**_settings_of(own, algorithm_class), **values}
    name, config = training_config(algorithm_class.name if algorithm_class else None, values,
                                   None, [], resume=Path(resume) if resume else None,
                                   steps=steps, algorithm_class=algorithm_class)
    folder, _ = train_run(algorithm_class or name, config, out=Path(out) if out else None,
                          resume=Path(resume) if resume else None,
                          root=str(root) if root else None, mirror=mirror,
                          report=_reporter(quiet), show_progress=progress)
    registered = algorithm_class is None or isinstance(algorithm, str)
    return Run(folder.path, folder.read_config(), None if registered else algorithm_class)


def _settings_of(hparams: dict[str, Any], algorithm_class: type[Algorithm]) -> dict[str, Any]:
    """An instance's hyperparameters that are settings (known to the engine or the class)."""
    from metactl.engine.config import known_keys

    allowed = known_keys(algorithm_class.defaults)
    return {key: value for key, value in hparams.items() if key in allowed}


def _run_and_class(run: Run | str | Path, algorithm: Any) -> tuple[Path, Any]:
    if isinstance(run, Run):
        return run.path, algorithm or run.algorithm
    return Path(run), algorithm


def evaluate(run: Run | str | Path, *, episodes: int | None = None, way: int | None = None,
             shot: int | None = None, query: int | None = None, split: str = "test",
             episode_file: str | Path | None = None, seed: int | None = None,
             inner_steps: int | None = None, device: str | None = None,
             root: str | Path | None = None, algorithm: type[Algorithm] | None = None,
             record: bool = True, tune_memory: bool = False, **settings: Any
             ) -> EvaluationResult:
    """Mean accuracy (or regression error) with its 95% CI over fixed episodes, as
    ``metactl evaluate``; saved in the run folder unless ``record=False``.

    Args:
        run: a :class:`Run` or a run folder.
        inner_steps: inner gradient steps at test time (gradient-based algorithms).
        algorithm: the Algorithm class of a run trained with an unregistered one (a
            :class:`Run` from :func:`train` remembers it).
        settings: evaluation-time settings, as ``evaluate --set`` takes them
            (``distance="cosine"``, ``test_inner_steps=10``...).
    """
    from metactl.engine.evaluator import evaluate_run
    from metactl.engine.session import evaluate_and_record

    if tune_memory:
        from metactl.engine.device import keep_freed_memory

        keep_freed_memory()
    path, algorithm_class = _run_and_class(run, algorithm)
    options = {"episodes": episodes, "way": way, "shot": shot, "query": query, "split": split,
               "episode_file": Path(episode_file) if episode_file else None, "seed": seed,
               "device": device, "root": str(root) if root else None,
               "settings": settings, "algorithm": algorithm_class}
    if record:
        return evaluate_and_record(path, [inner_steps], **options)[0]
    return evaluate_run(path, inner_steps=inner_steps, **options)


def predict(run: Run | str | Path, support: str | Path, queries: Sequence[str | Path], *,
            device: str | None = None, algorithm: type[Algorithm] | None = None
            ) -> list[Prediction]:
    """Adapt the run's model to ``support`` (one subfolder of images per class) and classify
    every query image (files or folders), as ``metactl predict``."""
    from metactl.engine.predictor import predict as predict_run

    path, algorithm_class = _run_and_class(run, algorithm)
    return predict_run(path, Path(support), [Path(q) for q in queries], device=device,
                       algorithm=algorithm_class)
