"""Reproduction reports: what was trained, what it scored, and how that compares with the paper.

A report is one JSON file per algorithm and dataset (``<out>/<algorithm>.json``) with a Markdown
twin beside it. RESULTS.md is rendered from the reports (``metactl results``), so every figure
in it has a file and a command behind it.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metactl.errors import DataError, UsageError

if TYPE_CHECKING:
    from metactl.algorithm import PaperResult
    from metactl.engine.evaluator import EvaluationResult
    from metactl.engine.run import RunFolder

REPORT_FORMAT = "metactl-reproduce-report"
MAIN_JOB_FORMAT = "metactl-main-job"
SHORT_RUNS_FORMAT = "metactl-short-runs"
REPORT_VERSION = 1
CURVE_POINTS = 40


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ProtocolRecord:
    """One training run of a reproduction: its settings, how far it got, and its curve.

    ``curve`` holds ``[step, accuracy, ci95]`` validation points, or ``[step, accuracy, None]``
    training points when the protocol has no validation (train+val training).
    """

    name: str
    run: str
    settings: dict[str, Any]
    command: str = ""
    steps_done: int = 0
    total_steps: int = 0
    train_seconds: float = 0.0
    curve: list[list[Any]] = field(default_factory=list)
    curve_kind: str = "validation"

    @property
    def finished(self) -> bool:
        return self.total_steps > 0 and self.steps_done >= self.total_steps

    def describe_progress(self) -> str:
        if not self.total_steps:
            return "not started"
        return f"step {self.steps_done:,} of {self.total_steps:,}"

    def seconds_to_finish(self) -> float | None:
        """Training time still needed at the pace measured so far."""
        if self.finished or not self.steps_done or not self.train_seconds:
            return None
        return self.train_seconds / self.steps_done * (self.total_steps - self.steps_done)

    def read_progress(self, run: RunFolder) -> None:
        """Refresh steps done, total steps and the learning curve from the run folder."""
        from metactl.engine.checkpoint import load_checkpoint

        if run.config_path.is_file():
            config = run.read_config()
            self.total_steps = math.ceil(int(config["episodes"]) / int(config["meta_batch"]))
        if run.last.is_file():
            checkpoint = load_checkpoint(run.last)
            self.steps_done = int(checkpoint["step"])
            self.train_seconds = float(checkpoint.get("train_seconds", self.train_seconds))
        self.curve, self.curve_kind = _learning_curve(run.metrics, self.steps_done)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProtocolRecord:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def _learning_curve(metrics: Path, up_to_step: int) -> tuple[list[list[Any]], str]:
    if not metrics.is_file():
        return [], "validation"
    records = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a crash; the checkpoint decides what counts
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= up_to_step:
            records.append(record)
    validation = [[r["step"], r["accuracy"], r.get("ci95")] for r in records
                  if r.get("kind") == "val" and "accuracy" in r]
    if validation:
        return _thin(validation), "validation"
    training = [[r["step"], r["accuracy"], None] for r in records
                if r.get("kind") == "train" and r.get("accuracy") is not None]
    return _thin(training), "training"


def _thin(points: list[list[Any]]) -> list[list[Any]]:
    """At most CURVE_POINTS points, evenly spread, always keeping the last."""
    if len(points) <= CURVE_POINTS:
        return points
    stride = len(points) / CURVE_POINTS
    kept = [points[int(index * stride)] for index in range(CURVE_POINTS - 1)]
    return [*kept, points[-1]]


@dataclass
class RowRecord:
    """One setting of the paper's table: the paper's figure, ours and the verdict.

    Accuracies and differences are in percent; ``status`` is ``final`` (the protocol finished),
    ``partial`` (evaluated before it finished) or ``pending`` (not evaluated yet).
    """

    setting: str
    way: int
    shot: int
    paper: float
    paper_ci95: float | None
    source: str
    note: str
    tolerance: float
    protocol: str
    status: str = "pending"
    ours: float | None = None
    ci95: float | None = None
    episodes: int = 0
    query: int = 0
    at_step: int = 0
    difference: float | None = None
    verdict: str = "pending"
    eval_seconds: float = 0.0
    command: str = ""
    evaluated: str = ""

    @classmethod
    def pending(cls, row: PaperResult, record: ProtocolRecord) -> RowRecord:
        return cls(row.setting, row.way, row.shot, row.accuracy, row.ci95, row.source, row.note,
                   row.tolerance, record.name)

    @classmethod
    def measured(cls, row: PaperResult, record: ProtocolRecord, result: EvaluationResult,
                 seconds: float, command: str) -> RowRecord:
        ours, ci95 = 100 * result.mean, 100 * result.ci95
        difference = ours - row.accuracy
        return cls(row.setting, row.way, row.shot, row.accuracy, row.ci95, row.source, row.note,
                   row.tolerance, record.name,
                   status="final" if record.finished else "partial", ours=round(ours, 2),
                   ci95=round(ci95, 2), episodes=result.episodes, query=result.query,
                   at_step=record.steps_done, difference=round(difference, 2),
                   verdict=verdict(difference, row.tolerance), eval_seconds=round(seconds, 1),
                   command=command, evaluated=_now())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowRecord:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def verdict(difference: float, tolerance: float) -> str:
    """``matches`` within ``tolerance`` points of the paper, else ``below`` or ``above``."""
    if abs(difference) <= tolerance:
        return "matches"
    return "below" if difference < 0 else "above"


@dataclass
class Report:
    """The JSON report of one algorithm on one dataset, and its Markdown twin."""

    path: Path
    algorithm: str
    dataset: str
    paper: str
    command: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    protocols: dict[str, ProtocolRecord] = field(default_factory=dict)
    rows: dict[str, RowRecord] = field(default_factory=dict)
    updated: str = ""

    @classmethod
    def open(cls, path: Path, algorithm: str, dataset: str, paper: str) -> Report:
        """The report at ``path`` to continue, or a new one; a file there that is not this
        algorithm's report on this dataset is an error, and is left untouched."""
        path = Path(path)
        if path.is_dir():
            raise UsageError(f"{path} is a folder, not a report file",
                             "pick another --out folder")
        if not path.exists():
            return cls(path, algorithm, dataset, paper)
        data = read_report(path)
        if data["algorithm"] != algorithm or data["dataset"] != dataset:
            raise UsageError(f"{path} is the report of {data['algorithm']} on {data['dataset']}",
                             "pick another --out folder")
        return cls(path, algorithm, dataset, paper, data.get("command", ""),
                   data.get("machine", {}),
                   {name: ProtocolRecord.from_json(item)
                    for name, item in data.get("protocols", {}).items()},
                   {name: RowRecord.from_json(item) for name, item in data.get("rows", {}).items()},
                   data.get("updated", ""))

    def to_json(self) -> dict[str, Any]:
        from metactl import __version__

        return {"format": REPORT_FORMAT, "version": REPORT_VERSION,
                "algorithm": self.algorithm, "dataset": self.dataset, "paper": self.paper,
                "metactl": __version__, "command": self.command, "machine": self.machine,
                "updated": self.updated,
                "protocols": {name: asdict(record) for name, record in self.protocols.items()},
                "rows": {name: asdict(record) for name, record in self.rows.items()}}

    def save(self) -> None:
        from metactl.engine.run import write_text_atomic

        self.updated = _now()
        write_text_atomic(self.path, json.dumps(self.to_json(), indent=2) + "\n")
        write_text_atomic(self.path.with_suffix(".md"), render_report(self.to_json()))


def read_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read report {path}: {error}",
                        "move it away, or pick another --out folder") from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise UsageError(f"{path} is not a metactl reproduce report",
                         "pick another --out folder")
    return data


def describe_machine(device: str = "auto") -> dict[str, Any]:
    """Where the figures were measured: CPU model and vector extensions, cores, threads, GPU."""
    import torch

    flags = _cpu_flags()
    machine = {"cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "cpu_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
               "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(),
               "host": platform.node(), "device": "cpu", "gpu": None}
    if device != "cpu" and torch.cuda.is_available():
        machine.update(device="cuda", gpu=torch.cuda.get_device_name())
    return machine


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    for line in _cpuinfo():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# --- Markdown ----------------------------------------------------------------------------------

def describe_machine_line(machine: dict[str, Any]) -> str:
    if not machine:
        return "unknown machine"
    if machine.get("gpu"):
        return f"{machine['gpu']} (torch {machine.get('torch', '?')})"
    bf16 = ", bf16" if machine.get("cpu_bf16") else ""
    return (f"{machine.get('cpu', 'CPU')} ({machine.get('cpu_capability', '?')}{bf16}), "
            f"{machine.get('cores', '?')} cores, {machine.get('torch_threads', '?')} torch "
            f"threads, torch {machine.get('torch', '?')}")


def format_hours(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def _setting_name(row: dict[str, Any]) -> str:
    return f"{row['way']}-way {row['shot']}-shot"


def _paper_figure(row: dict[str, Any]) -> str:
    figure = f"{row['paper']:.2f}".rstrip("0").rstrip(".") if row["paper"] is not None else "—"
    if row.get("paper_ci95") is not None:
        figure += f" ± {row['paper_ci95']}"
    return figure


def _ours(row: dict[str, Any]) -> str:
    if row.get("ours") is None:
        return "not evaluated yet"
    return f"{row['ours']:.2f} ± {row['ci95']:.2f}"


def _status(row: dict[str, Any], protocols: dict[str, Any]) -> str:
    if row["status"] == "final":
        return "final"
    protocol = protocols.get(row["protocol"], {})
    total = protocol.get("total_steps") or 0
    at = row.get("at_step") or protocol.get("steps_done", 0)
    return f"{row['status']}, step {at:,} of {total:,}" if total else row["status"]


def _difference(row: dict[str, Any]) -> str:
    return "" if row.get("difference") is None else f"{row['difference']:+.2f}"


def table_lines(report: dict[str, Any], with_algorithm: bool = False) -> list[str]:
    protocols = report.get("protocols", {})
    lines = []
    for row in report.get("rows", {}).values():
        cells = [_setting_name(row), _ours(row), _paper_figure(row), _difference(row),
                 row["verdict"], _status(row, protocols)]
        if with_algorithm:
            cells.insert(0, f"`{report['algorithm']}`")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


TABLE_HEADER = ("| setting | ours (95% CI) | paper | difference | verdict | status |\n"
                "|---|---|---|---|---|---|")


def render_report(report: dict[str, Any]) -> str:
    """The Markdown twin of a report: the comparison table, then how each figure was made."""
    lines = [f"# {report['algorithm']} on {report['dataset']}", "",
             f"Reproducing {report['paper']}", "", TABLE_HEADER, *table_lines(report), ""]
    lines += _evaluation_note(report)
    lines += ["", "## Training", ""]
    for protocol in report.get("protocols", {}).values():
        lines += _protocol_lines(protocol)
    evaluations = [row for row in report.get("rows", {}).values() if row.get("command")]
    if evaluations:
        lines += ["## Evaluation commands", "", "```bash",
                  *[row["command"] for row in evaluations], "```", ""]
    lines += [f"Measured on {describe_machine_line(report.get('machine', {}))}; "
              f"metactl {report.get('metactl', '?')}; last updated {report.get('updated', '')}.",
              "", f"Regenerate: `{report.get('command', '')}`", ""]
    return "\n".join(lines)


def _evaluation_note(report: dict[str, Any]) -> list[str]:
    rows = [row for row in report.get("rows", {}).values() if row.get("ours") is not None]
    if not rows:
        return []
    episodes = sorted({row["episodes"] for row in rows})
    queries = sorted({row["query"] for row in rows})
    notes = sorted({row["note"] for row in report.get("rows", {}).values() if row.get("note")})
    tolerance = sorted({row["tolerance"] for row in report.get("rows", {}).values()})
    text = (f"Ours: mean accuracy over {'/'.join(f'{e:,}' for e in episodes)} fixed test episodes "
            f"(seed 0) with {'/'.join(map(str, queries))} queries per class, and the half-width "
            f"of its 95% confidence interval. The verdict is *matches* within "
            f"{'/'.join(f'{t:g}' for t in tolerance)} points of the paper.")
    return [text] + [f"Note: {note}." for note in notes]


def _protocol_lines(protocol: dict[str, Any]) -> list[str]:
    done, total = protocol.get("steps_done", 0), protocol.get("total_steps", 0)
    state = "finished" if total and done >= total else f"step {done:,} of {total:,}"
    lines = [f"### {protocol['name']} ({state}, {format_hours(protocol.get('train_seconds'))} "
             "of training)", "", "```bash", protocol.get("command", ""), "```", ""]
    remaining = ProtocolRecord.from_json(protocol).seconds_to_finish()
    if remaining:
        lines += [f"Unfinished: about {format_hours(remaining)} more training at the pace "
                  "measured so far would complete the protocol (`metactl reproduce` again "
                  "continues it).", ""]
    curve = protocol.get("curve") or []
    if curve:
        kind = protocol.get("curve_kind", "validation")
        points = ", ".join(f"{step:,}: {100 * accuracy:.1f}" for step, accuracy, _ in curve[-12:])
        lines += [f"{kind.capitalize()} accuracy by step (last {min(len(curve), 12)} points, "
                  f"in %): {points}.", ""]
    return lines


# --- RESULTS.md -------------------------------------------------------------------------------

def _documents(folder: Path, kind: str) -> list[dict[str, Any]]:
    """The JSON documents under ``folder`` whose ``format`` is ``kind``, with their ``_path``."""
    found = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == kind:
            found.append({**data, "_path": path})
    return found


def find_reports(folder: Path) -> list[dict[str, Any]]:
    """Every reproduce report under ``folder``, by dataset then algorithm."""
    return sorted(_documents(folder, REPORT_FORMAT), key=lambda r: (r["dataset"], r["algorithm"]))


def find_main_jobs(folder: Path) -> list[dict[str, Any]]:
    """The README main-job reports (``benchmarks/main_job.py``) under ``folder``."""
    return _documents(folder, MAIN_JOB_FORMAT)


def main_job_lines(job: dict[str, Any], root: Path) -> list[str]:
    """The README's main job: its commands, time per stage and test accuracy."""
    seconds, machine = job["seconds"], job.get("machine", {})
    relative = os.path.relpath(job["_path"], root)
    flags = ", ".join(machine.get("cpu_flags") or []) or "no AVX2"
    stages = " | ".join(f"{seconds[stage]:.0f} s" for stage in ("fetch", "train", "evaluate"))
    return ["## The README's main job", "", f"`{job['command']}`", "",
            "| fetch | train | evaluate | total | test accuracy (95% CI) | paper |",
            "|---|---|---|---|---|---|",
            f"| {stages} | {seconds['total'] / 60:.1f} min | {100 * job['accuracy']:.2f} ± "
            f"{100 * job['ci95']:.2f} ({job['test_episodes']:,} {job['way']}-way "
            f"{job['shot']}-shot episodes) | {100 * job['paper']:.1f} |", "",
            f"Trained on {job['training']['episodes']:,} episodes; measured on "
            f"{machine.get('usable_cpus', '?')} usable CPUs ({flags}), torch "
            f"{machine.get('torch', '?')}, load average {machine.get('load_average_at_start')} at "
            f"the start. Report: [{relative}]({relative}); regenerate it with "
            "`python benchmarks/main_job.py`.", ""]


def render_results(reports: list[dict[str, Any]], root: Path, preamble: str = "",
                   main_jobs: list[dict[str, Any]] = (),
                   short_runs: list[dict[str, Any]] = ()) -> str:
    """RESULTS.md: one summary table per dataset, each row linking to its report, the
    README's main job and the short-run tables when reports of them are given."""
    lines = ["# Results", "",
             "<!-- Generated by `metactl results` from the reports under reports/; "
             "do not edit by hand. -->", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    for job in main_jobs:
        lines += main_job_lines(job, root)
    for dataset in sorted({report["dataset"] for report in reports}):
        chosen = [report for report in reports if report["dataset"] == dataset]
        lines += [f"## {dataset}", "",
                  "| algorithm | setting | ours (95% CI) | paper | difference | verdict | status "
                  "| training |", "|---|---|---|---|---|---|---|---|"]
        for report in chosen:
            for line, row in zip(table_lines(report, with_algorithm=True),
                                 report.get("rows", {}).values(), strict=True):
                protocol = report.get("protocols", {}).get(row["protocol"], {})
                lines.append(line + f" {format_hours(protocol.get('train_seconds'))} |")
        lines.append("")
        for report in chosen:
            link = Path(report["_path"]).with_suffix(".md")
            relative = os.path.relpath(link, root)
            lines.append(f"- `{report['algorithm']}`: {report['paper']} Report: "
                         f"[{relative}]({relative}); measured on "
                         f"{describe_machine_line(report.get('machine', {}))}.")
        lines.append("")
    for report in short_runs:
        lines += short_runs_lines(report, root)
    return "\n".join(lines)


# --- Short runs (benchmarks/mini_imagenet_cpu.py) ----------------------------------------------

def find_short_runs(folder: Path) -> list[dict[str, Any]]:
    """The short-run reports (``format: metactl-short-runs``) under ``folder``, by dataset."""
    return sorted(_documents(folder, SHORT_RUNS_FORMAT), key=lambda report: report["dataset"])


def beats_untrained(entry: dict[str, Any]) -> bool:
    """Whether the trained model's 95% interval lies wholly above the untrained model's."""
    before, after = entry["untrained"], entry["trained"]
    return after["mean"] - after["ci95"] > before["mean"] + before["ci95"]


def _percent(result: dict[str, Any]) -> str:
    return f"{100 * result['mean']:.2f} ± {100 * result['ci95']:.2f}"


def _short_run_row(name: str, entry: dict[str, Any]) -> str:
    settings = ", ".join(f"{key}={value}" for key, value in entry["settings"].items())
    gain = 100 * (entry["trained"]["mean"] - entry["untrained"]["mean"])
    verdict = "yes" if beats_untrained(entry) else "**no**"
    return (f"| `{name}` | {settings} | {entry['steps']:,} | "
            f"{entry['train_cpu_seconds'] / 60:.1f} min | {_percent(entry['untrained'])} | "
            f"{_percent(entry['trained'])} | {gain:+.2f} | {verdict} |")


def _test_episodes_note(entries: list[dict[str, Any]]) -> str:
    shapes = sorted({(result["episodes"], result["way"], result["shot"], result["query"])
                     for entry in entries for result in (entry["untrained"], entry["trained"])})
    described = "; ".join(f"{episodes:,} fixed {way}-way {shot}-shot test episodes (seed 0) "
                          f"with {query} queries per class"
                          for episodes, way, shot, query in shapes)
    return (f"Each algorithm trained for a few minutes on one CPU thread with the scaled-down "
            f"settings shown, and was tested on {described}, like the model it started from "
            "(*untrained*: as initialised, seed 0, no step, batch norm with its initial running "
            "statistics). *Gain*: trained minus untrained, in points. *Beats untrained*: the two "
            "95% intervals do not overlap. These rows show whether training works in minutes, "
            "not what the methods reach: the paper protocols below train for hours to days.")


def _paper_protocol_lines(report: dict[str, Any]) -> list[str]:
    dataset, entries = report["dataset"], report.get("algorithms", {})
    declared = {name: entry["paper"] for name, entry in entries.items() if entry.get("paper")}
    lines = ["### Paper protocols", ""]
    if declared:
        lines += ["| algorithm | command | the paper's figures |", "|---|---|---|"]
        for name, rows in declared.items():
            figures = "; ".join(
                f"{row['way']}-way {row['shot']}-shot {row['accuracy']:.2f}"
                + (f" ± {row['ci95']:.2f}" if row.get("ci95") is not None else "")
                + (f" ({row['source']})" if row.get("source") else "") for row in rows)
            lines.append(f"| `{name}` | `metactl reproduce {name} --dataset {dataset}` | "
                         f"{figures} |")
        lines.append("")
    undeclared = [name for name in entries if name not in declared]
    if undeclared:
        lines += [f"`metactl reproduce ALGORITHM --dataset {dataset}` trains and evaluates an "
                  f"algorithm under its paper's protocol once the algorithm declares its paper's "
                  f"{dataset} results (`paper_results`); not declared yet: "
                  + ", ".join(f"`{name}`" for name in undeclared) + ".", ""]
    return lines


def _notes(entries: dict[str, dict[str, Any]]) -> list[str]:
    notes = [f"- `{name}`: {entry['note']}." for name, entry in entries.items()
             if entry.get("note")]
    return [*notes, ""] if notes else []


def short_runs_lines(report: dict[str, Any], root: Path) -> list[str]:
    """A RESULTS.md section: one row per algorithm (untrained and trained test accuracy), then
    the paper protocols' commands."""
    entries = report.get("algorithms", {})
    relative = os.path.relpath(report["_path"], root)
    lines = [f"## {report.get('title', report['dataset'] + ': short runs')}", ""]
    if entries:
        machines = sorted({describe_machine_line(entry.get("machine", {}))
                           for entry in entries.values()})
        dates = sorted(entry.get("date", "")[:10] for entry in entries.values())
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        lines += [_test_episodes_note(list(entries.values())), "",
                  "| algorithm | short-run settings | steps | training (CPU) | untrained (95% CI) "
                  "| trained (95% CI) | gain | beats untrained |",
                  "|---|---|---|---|---|---|---|---|",
                  *[_short_run_row(name, entry) for name, entry in entries.items()], "",
                  *_notes(entries),
                  f"Measured on {'; '.join(machines)}; {when}. Report: [{relative}]({relative}); "
                  "regenerate a row with its `command` there (e.g. `python "
                  f"benchmarks/mini_imagenet_cpu.py --algorithms {next(iter(entries))}`), then "
                  "`metactl results reports -o RESULTS.md`.", ""]
    return lines + _paper_protocol_lines(report)
