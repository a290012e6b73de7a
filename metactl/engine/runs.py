"""Reading run folders back: what ``metactl runs list / show / compare`` print.

Everything here reads files only (config.yaml, run.json, metrics.jsonl, evaluation-*.json); no
checkpoint is opened, so listing hundreds of runs is quick and needs no torch.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metactl.engine.record import read_record
from metactl.errors import UsageError

SEARCH_DEPTH = 3


@dataclass
class RunSummary:
    """One run as ``runs list`` shows it.

    Attributes:
        steps_done, steps_total: meta-training steps; episodes likewise (tasks).
        best_validation: ``{"metric", "mean", "ci95", "step"}`` of the best validation, or None.
        test: the run's main test evaluation (its own way and shot, default settings), or None.
    """

    path: Path
    algorithm: str
    dataset: str
    way: int
    shot: int
    status: str
    steps_done: int
    steps_total: int
    episodes_done: int
    episodes_total: int
    started: str | None
    best_validation: dict[str, Any] | None
    test: dict[str, Any] | None
    config: dict[str, Any] = field(repr=False)
    record: dict[str, Any] = field(repr=False)

    @property
    def setting(self) -> str:
        return f"{self.way}-way {self.shot}-shot" if self.dataset != "sinusoid" else (
            f"{self.shot}-shot")

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "algorithm": self.algorithm, "dataset": self.dataset,
                "way": self.way, "shot": self.shot, "status": self.status,
                "steps": {"done": self.steps_done, "total": self.steps_total},
                "episodes": {"done": self.episodes_done, "total": self.episodes_total},
                "started": self.started, "best_validation": self.best_validation,
                "test": self.test}


def is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file()


def find_runs(folder: Path) -> list[Path]:
    """``folder`` itself if it is a run, else the runs under it (up to 3 levels), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", "pass the folder holding your runs "
                         "(default: runs)")
    if is_run(folder):
        return [folder]
    found = []
    for depth in range(1, SEARCH_DEPTH + 1):
        found += [path.parent for path in folder.glob("/".join(["*"] * depth) + "/config.yaml")]
    return sorted(path for path in set(found) if not any(
        other != path and other in path.parents for other in found))


def read_config(folder: Path) -> dict[str, Any]:
    from metactl.engine.run import open_run

    return open_run(folder).read_config()


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def read_evaluations(folder: Path) -> dict[str, dict[str, Any]]:
    """``evaluation-*.json`` files by name (without ``.json``), oldest first."""
    evaluations = {}
    paths = sorted(Path(folder).glob("evaluation-*.json"), key=lambda p: p.stat().st_mtime)
    for path in paths:
        try:
            evaluations[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return evaluations


def best_validation(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    validations = [r for r in metrics if r.get("kind") == "val"]
    if not validations:
        return None
    metric = "accuracy" if "accuracy" in validations[0] else "mse"
    pick = max if metric == "accuracy" else min
    best = pick(validations, key=lambda r: r[metric])
    return {"metric": metric, "mean": best[metric], "ci95": best.get("ci95"), "step": best["step"]}


def main_test(config: dict[str, Any], evaluations: dict[str, dict[str, Any]]
              ) -> dict[str, Any] | None:
    """The evaluation on the run's own way and shot with default settings, else the latest
    test evaluation."""
    own = evaluations.get(f"evaluation-test-{config['way']}way-{config['shot']}shot")
    if own is not None:
        return own
    tests = [e for e in evaluations.values() if e.get("split") == "test" and "mean" in e]
    return tests[-1] if tests else None


def live_status(record: dict[str, Any]) -> str:
    """The recorded status; ``died`` for a run recorded as running on this host whose process
    is gone (killed without a chance to record it)."""
    status = record.get("status", "unknown")
    pid = record.get("pid")
    if status == "running" and pid and record.get("host") == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return "died"
        except OSError:
            pass
    return status


def summarize(folder: Path) -> RunSummary:
    config, record, metrics = read_config(folder), read_record(folder), read_metrics(folder)
    meta_batch = int(config.get("meta_batch", 1))
    steps_total = -(-int(config["episodes"]) // meta_batch)
    logged = max((int(r.get("step", 0)) for r in metrics), default=0)
    steps_done = max(int(record.get("steps", {}).get("done", 0)), logged)
    return RunSummary(
        path=Path(folder), algorithm=config["algorithm"], dataset=config.get("dataset", "?"),
        way=int(config.get("way", 0)), shot=int(config.get("shot", 0)),
        status=live_status(record) if record else "unknown",
        steps_done=steps_done, steps_total=steps_total,
        episodes_done=min(steps_done * meta_batch, int(config["episodes"])),
        episodes_total=int(config["episodes"]), started=record.get("started"),
        best_validation=best_validation(metrics),
        test=main_test(config, read_evaluations(folder)), config=config, record=record)


def list_runs(folder: Path, algorithm: str | None = None, dataset: str | None = None,
              status: str | None = None) -> list[RunSummary]:
    """The runs under ``folder`` that match every filter given."""
    summaries = [summarize(path) for path in find_runs(folder)]
    return [s for s in summaries
            if (algorithm is None or s.algorithm == algorithm)
            and (dataset is None or s.dataset == dataset)
            and (status is None or s.status == status)]


def show_run(folder: Path) -> dict[str, Any]:
    """Everything ``runs show`` prints: summary, config, provenance, evaluations."""
    summary = summarize(folder)
    return {**summary.to_json(), "config": summary.config, "record": summary.record,
            "evaluations": read_evaluations(folder)}


def describe_score(result: dict[str, Any] | None) -> str:
    """``97.59 ± 0.22`` for accuracies (percent), ``0.0123 ± 0.0040`` for errors."""
    if not result:
        return "-"
    mean, ci95 = result.get("mean"), result.get("ci95")
    if mean is None:
        return "-"
    if result.get("metric", "accuracy") == "accuracy":
        interval = "" if ci95 is None else f" ± {100 * ci95:.2f}"
        return f"{100 * mean:.2f}{interval}"
    interval = "" if ci95 is None else f" ± {ci95:.4f}"
    return f"{mean:.4f}{interval}"


@dataclass
class Comparison:
    """``runs compare``: the runs' names, the settings whose values differ and the results.

    Attributes:
        settings: key -> one value per run.
        results: row label -> one cell per run (text).
    """

    runs: list[str]
    settings: dict[str, list[Any]]
    results: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "settings": self.settings, "results": self.results}


def compare_runs(folders: list[Path]) -> Comparison:
    summaries = [summarize(Path(folder)) for folder in folders]
    keys = sorted({key for s in summaries for key in s.config})
    settings = {key: [s.config.get(key) for s in summaries] for key in keys
                if len({json.dumps(s.config.get(key), default=str) for s in summaries}) > 1}
    results: dict[str, list[str]] = {
        "status": [s.status for s in summaries],
        "steps": [f"{s.steps_done}/{s.steps_total}" for s in summaries],
        "episodes": [f"{s.episodes_done}/{s.episodes_total}" for s in summaries],
        "best validation": [describe_score(s.best_validation) for s in summaries],
    }
    evaluations = [read_evaluations(s.path) for s in summaries]
    for name in sorted({name for found in evaluations for name in found}):
        label = name.removeprefix("evaluation-")
        results[label] = [describe_score(found.get(name)) for found in evaluations]
    results["paper"] = [paper_figure(s) for s in summaries]
    return Comparison([str(s.path) for s in summaries], settings, results)


def paper_figure(summary: RunSummary) -> str:
    """The paper's accuracy for the run's dataset, way and shot, where its algorithm declares
    one (``paper_results`` rows with ``dataset``, ``way``, ``shot``, ``accuracy`` and ``ci95`` in
    percent)."""
    from metactl.plugins import get_registry

    try:
        algorithm = get_registry().get(summary.algorithm)
    except UsageError:
        return "-"
    for row in getattr(algorithm, "paper_results", ()):
        if (getattr(row, "dataset", None), getattr(row, "way", None),
                getattr(row, "shot", None)) == (summary.dataset, summary.way, summary.shot):
            ci95 = getattr(row, "ci95", None)
            return f"{row.accuracy:.2f}" + ("" if ci95 is None else f" ± {ci95:.2f}")
    return "-"
