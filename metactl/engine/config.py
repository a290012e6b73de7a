"""A run's configuration: engine defaults, the algorithm's defaults, a config file, CLI options.

Later sources override earlier ones: engine defaults, then the algorithm's ``defaults`` entries
that match the run (``"*"``, the dataset, ``dataset/N-shot``, ``dataset/N-way``,
``dataset/N-way/K-shot``), then ``--config FILE.yaml``, then CLI options, then ``--set``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from metactl.errors import UsageError

ENGINE_DEFAULTS: dict[str, Any] = {
    "dataset": "omniglot",
    "scheme": None,
    "size": None,
    "way": 5,
    "shot": 1,
    "query": 15,
    "train_way": None,
    "train_shot": None,
    "train_query": None,
    "episodes": 10000,
    "meta_batch": 1,
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_decay": 1.0,
    "lr_decay_every": 0,
    "grad_clip": 0.0,
    "val_every": 500,
    "val_episodes": 200,
    "eval_episodes": 1000,
    "eval_seed": 0,
    "seed": 0,
    "device": "auto",
    "amp": None,
    "compile": None,
    "channels_last": None,
    "deterministic": None,
    "augment": False,
}


def dataset_settings(dataset: str) -> dict[str, Any]:
    """Settings a registered task family implies (sinusoid: way 1, shot 10...), applied
    between the engine's defaults and the algorithm's; none for image datasets."""
    from metactl.plugins import get_datasets

    registry = get_datasets()
    if dataset not in registry:
        return {}
    return dict(getattr(registry.get(dataset), "settings", {}))


ENGINE_HELP = {
    "dataset": "dataset name (metactl data list)",
    "scheme": "split scheme of the dataset (default: the card's, vinyals for Omniglot)",
    "size": "image side in pixels (default: the card's, 28 for Omniglot)",
    "way": "classes per validation and test task",
    "shot": "support images per class",
    "query": "query images per class at validation and test time",
    "train_way": "classes per training task (default: way)",
    "train_shot": "support images per class in training (default: shot)",
    "train_query": "query images per class in training (default: query)",
    "episodes": "training tasks in all (steps = episodes / meta_batch)",
    "optimizer": "outer optimizer: adam, sgd or rmsprop",
    "lr": "outer learning rate",
    "momentum": "momentum of sgd",
    "weight_decay": "L2 penalty of the outer optimizer",
    "lr_decay_every": "steps between learning-rate decays (0: never)",
    "grad_clip": "clip the meta-gradient norm to this (0: no clipping)",
    "val_episodes": "fixed validation episodes",
    "eval_episodes": "test episodes of metactl evaluate",
    "seed": "seed of training (initialisation and task sampling)",
    "device": "auto, cpu or cuda",
    "compile": "torch.compile the model (default: the algorithm's choice)",
    "channels_last": "channels-last memory format (default: the algorithm's choice)",
    "deterministic": "deterministic kernels (default: the algorithm's choice)",
    "meta_batch": "tasks per meta-training step",
    "lr_decay": "multiply the learning rate by this every lr_decay_every steps",
    "val_every": "validate every this many steps",
    "eval_seed": "seed of the fixed evaluation episodes (the same for every algorithm)",
    "amp": "mixed precision on CUDA: bf16, fp16 or none (default: the algorithm's choice)",
    "augment": "augment training images: random crop with 8 px padding, horizontal flip, "
               "colour jitter (never at evaluation)",
}

OPTIMIZERS = ("adam", "sgd", "rmsprop")


def _matching_default_keys(dataset: str, way: int, shot: int) -> list[str]:
    return ["*", dataset, f"{dataset}/{shot}-shot", f"{dataset}/{way}-way",
            f"{dataset}/{way}-way/{shot}-shot"]


def algorithm_defaults(defaults: Mapping[str, Mapping[str, Any]], dataset: str, way: int,
                       shot: int) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in _matching_default_keys(dataset, way, shot):
        merged.update(defaults.get(key, {}))
    return merged


def known_keys(defaults: Mapping[str, Mapping[str, Any]]) -> set[str]:
    keys = set(ENGINE_DEFAULTS)
    for entry in defaults.values():
        keys.update(entry)
    return keys


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist", "check the --config path") from None
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"cannot read config file {path}: {error}",
                         "fix the YAML file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of keys to values",
                         "write it as `key: value` lines")
    return {str(key).replace("-", "_"): _read_value(value) if isinstance(value, str) else value
            for key, value in data.items()}


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "amp=bf16"]`` -> ``{"lr": 0.01, "amp": "bf16"}`` (values read as YAML)."""
    parsed = {}
    for text in assignments:
        key, separator, value = text.partition("=")
        if not separator or not key.strip():
            raise UsageError(f"--set {text!r} is not key=value", "write --set lr=0.001")
        parsed[key.strip().replace("-", "_")] = _read_value(value)
    return parsed


def _read_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
        except ValueError:
            return value
    return value


def resolve_config(algorithm_name: str, defaults: Mapping[str, Mapping[str, Any]],
                   file_values: Mapping[str, Any], cli_values: Mapping[str, Any],
                   assignments: Mapping[str, Any]) -> dict[str, Any]:
    """Merge every source of settings into one flat config and check it."""
    chosen = {**file_values, **{k: v for k, v in cli_values.items() if v is not None},
              **assignments}
    allowed = known_keys(defaults)
    for key in chosen:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = (f"did you mean {close[0]!r}?" if close else
                    f"see `metactl plugins info {algorithm_name}` for the keys it accepts")
            raise UsageError(f"{algorithm_name} has no setting {key!r}", hint)
    probe = {**ENGINE_DEFAULTS, **chosen}
    config = {**ENGINE_DEFAULTS, **dataset_settings(str(probe["dataset"])),
              **algorithm_defaults(defaults, probe["dataset"], int(probe["way"]),
                                   int(probe["shot"])),
              **chosen}
    config["algorithm"] = algorithm_name
    for key, fallback in (("train_way", "way"), ("train_shot", "shot"), ("train_query", "query")):
        if config[key] is None:
            config[key] = config[fallback]
    _check_config(config)
    return config


def _check_config(config: dict[str, Any]) -> None:
    for key in ("way", "shot", "query", "train_way", "train_shot", "train_query", "episodes",
                "meta_batch", "val_every", "val_episodes", "eval_episodes", "seed", "eval_seed",
                "lr_decay_every"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"setting {key} must be a whole number, got {value!r}",
                             f"pass e.g. --set {key}=5")
        if value < 0 or (value == 0 and key in ("way", "shot", "episodes", "meta_batch",
                                                  "train_way", "train_shot", "val_every")):
            raise UsageError(f"setting {key} must be positive, got {value}",
                             "pass a positive number")
    for key in ("lr", "momentum", "weight_decay", "lr_decay", "grad_clip"):
        if isinstance(config[key], bool) or not isinstance(config[key], (int, float)):
            raise UsageError(f"setting {key} must be a number, got {config[key]!r}",
                             f"pass e.g. --set {key}=0.001")
    if config["optimizer"] not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {config['optimizer']!r}",
                         f"use one of {', '.join(OPTIMIZERS)}")
    if config["device"] not in ("auto", "cpu", "cuda") and not str(config["device"]).startswith(
            "cuda:"):
        raise UsageError(f"unknown device {config['device']!r}", "use auto, cpu or cuda")
    if not isinstance(config["augment"], bool):
        raise UsageError(f"setting augment must be true or false, got {config['augment']!r}",
                         "pass --set augment=true")
    if config["amp"] not in (None, "none", "bf16", "fp16"):
        raise UsageError(f"unknown mixed-precision mode {config['amp']!r}",
                         "use bf16, fp16 or none")
