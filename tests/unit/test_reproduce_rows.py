"""The pieces of ``metactl reproduce``: durations, settings, plans, verdicts, train+val."""

from __future__ import annotations

import pytest
import torch

from metactl.algorithm import Algorithm, PaperResult
from metactl.data.episodes import SplitData
from metactl.engine.reports import verdict
from metactl.engine.reproduce import parse_duration, parse_setting, plan_reproduction
from metactl.errors import PluginError, UsageError
from metactl.plugins import AlgorithmRegistry, get_registry


@pytest.mark.parametrize(("text", "seconds"), [("45s", 45), ("90m", 5400), ("2h", 7200),
                                               ("1h30m", 5400), ("1.5h", 5400), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "h", "2 hours", "-1h", "0m", "1h-5m"])
def test_what_is_not_a_duration(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_settings():
    assert parse_setting("5w1s") == (5, 1) and parse_setting("20W5S") == (20, 5)
    with pytest.raises(UsageError, match="is not a setting"):
        parse_setting("5-way")


def test_verdict_is_within_the_tolerance_either_side():
    assert verdict(-0.5, 0.5) == verdict(0.4, 0.5) == "matches"
    assert verdict(-0.51, 0.5) == "below" and verdict(1.2, 1.0) == "above"


def test_the_plan_trains_each_protocol_once_for_all_its_rows():
    plan = plan_reproduction(get_registry().get("prototypical"), "omniglot")
    assert [p.name for p in plan.protocols] == ["omniglot-1shot", "omniglot-5shot"]
    assert [r.setting for r in plan.protocols[0].rows] == ["5w1s", "20w1s"]
    assert plan.protocols[0].settings["train_split"] == "trainval"
    only = plan_reproduction(get_registry().get("prototypical"), "omniglot", ["20w5s"])
    assert [(p.name, [r.setting for r in p.rows]) for p in only.protocols] == [
        ("omniglot-5shot", ["20w5s"])]


def test_every_built_in_paper_row_names_a_declared_protocol_of_resolvable_settings():
    from metactl.engine.config import resolve_config

    for entry in get_registry().entries():
        algorithm = entry.algorithm
        for name, settings in algorithm.paper_protocols.items():
            config = resolve_config(algorithm.name, algorithm.defaults, {}, dict(settings), {})
            assert config["episodes"] > 0, name
        for row in algorithm.paper_results:
            assert row.protocol in algorithm.paper_protocols


def test_registering_a_row_with_an_undeclared_protocol_is_a_plugin_error():
    class Broken(Algorithm):
        name, family = "broken", "metric"
        paper_results = (PaperResult("omniglot", 5, 1, 90.0, "nowhere"),)

    with pytest.raises(PluginError, match="protocol 'nowhere'"):
        AlgorithmRegistry().add(Broken)


def split(name: str, counts: list[int], start: int) -> SplitData:
    offsets = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    images = torch.arange(start, start + sum(counts), dtype=torch.uint8).view(-1, 1, 1)
    return SplitData(images, offsets, tuple(f"{name}{i}" for i in range(len(counts))), (0, 90),
                     name, "fingerprint")


def test_joined_splits_keep_every_class_and_image_in_order():
    joined = split("t", [2, 3], 0).joined(split("v", [4], 5), "trainval")
    assert joined.class_names == ("t0", "t1", "v0") and joined.num_classes == 6
    assert joined.offsets.tolist() == [0, 2, 5, 9]
    assert joined.images.flatten().tolist() == list(range(9))
    assert joined.name == "trainval" and joined.rotations == (0, 90)


@pytest.mark.slow
def test_trainval_trains_on_the_1200_characters_without_validation(omniglot_root, tmp_path):
    from metactl.engine.config import resolve_config
    from metactl.engine.tasks import load_tasks

    config = resolve_config("prototypical", get_registry().get("prototypical").defaults, {},
                            {"train_split": "trainval"}, {})
    tasks = load_tasks(config, torch.device("cpu"), None, str(omniglot_root), lambda m: None)
    assert tasks.train.num_classes == 4800 and tasks.train.stored_classes == 1200
    assert tasks.validation is None


def test_a_partial_protocol_reports_its_curve_and_the_time_it_still_needs():
    from metactl.engine.reports import render_report

    protocol = {"name": "omniglot-5w1s", "run": "runs/x", "settings": {}, "command": "metactl "
                "train maml", "steps_done": 1000, "total_steps": 4000, "train_seconds": 1800.0,
                "curve": [[500, 0.9, 0.01], [1000, 0.95, 0.01]], "curve_kind": "validation"}
    row = {"setting": "5w1s", "way": 5, "shot": 1, "paper": 98.7, "paper_ci95": 0.4,
           "source": "Table 1", "note": "", "tolerance": 0.5, "protocol": "omniglot-5w1s",
           "status": "partial", "ours": 95.1, "ci95": 0.3, "episodes": 1000, "query": 15,
           "at_step": 1000, "difference": -3.6, "verdict": "below", "command": "metactl evaluate"}
    text = render_report({"algorithm": "maml", "dataset": "omniglot", "paper": "Finn (2017).",
                          "protocols": {"omniglot-5w1s": protocol}, "rows": {"5w1s": row}})
    assert "| 5-way 1-shot | 95.10 ± 0.30 | 98.7 ± 0.4 | -3.60 | below | partial, step 1,000 " \
           "of 4,000 |" in text
    assert "about 1h30m more training" in text
    assert "Validation accuracy by step (last 2 points, in %): 500: 90.0, 1,000: 95.0." in text
