"""A run's configuration: engine defaults, the algorithm's defaults, a config file, CLI options.

Later sources override earlier ones: engine defaults, then the algorithm's ``defaults`` entries
that match the run (``"*"``, the dataset, ``dataset/N-shot``, ``dataset/N-way``,
``dataset/N-way/K-shot``), then ``--config FILE.yaml``, then CLI options, then ``--set``.
"""

from __future__ import annotations

import difflib
import math
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
    "train_split": "train",
    "train_classes": 0,
    "episodes": 10000,
    "meta_batch": 1,
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "rmsprop_alpha": 0.99,
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
    "cuda_graphs": None,
    "logger": None,
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
    "train_classes": "train on this many of the training classes, spread evenly over them (0: "
                     "all); for quick experiments and tests",
    "train_split": "train, or trainval: train on the train and val classes together (no "
                   "validation), as papers do for their final models",
    "episodes": "training tasks in all (steps = episodes / meta_batch)",
    "optimizer": "outer optimizer: adam, sgd or rmsprop",
    "lr": "outer learning rate",
    "momentum": "momentum of sgd and rmsprop",
    "rmsprop_alpha": "decay of rmsprop's running average of squared gradients",
    "weight_decay": "L2 penalty of the outer optimizer",
    "lr_decay_every": "steps between learning-rate decays (0: never)",
    "grad_clip": "clip the meta-gradient norm to this (0: no clipping)",
    "val_episodes": "fixed validation episodes",
    "eval_episodes": "test episodes of metactl evaluate",
    "seed": "seed of training (initialisation and task sampling)",
    "device": "auto, cpu or cuda",
    "compile": "torch.compile the model (default: the algorithm's choice)",
    "channels_last": "channels-last memory format: true, false or auto (default: the "
                     "algorithm's choice; auto: on the CPU, and on CUDA with bf16 or fp16)",
    "deterministic": "deterministic kernels (default: the algorithm's choice)",
    "cuda_graphs": "on CUDA, replay each training step from a CUDA graph (default: the "
                   "algorithm's choice)",
    "meta_batch": "tasks per meta-training step",
    "lr_decay": "multiply the learning rate by this every lr_decay_every steps",
    "val_every": "validate every this many steps",
    "eval_seed": "seed of the fixed evaluation episodes (the same for every algorithm)",
    "amp": "mixed precision: auto (bf16 where the CPU or GPU computes it natively, else fp32), "
           "bf16, fp16 (CUDA) or none (default: the algorithm's choice)",
    "logger": "metrics loggers besides metrics.jsonl, comma-separated: csv, tensorboard",
    "augment": "augment training images: random crop with 8 px padding, horizontal flip, "
               "colour jitter (never at evaluation)",
}

OPTIMIZERS = ("adam", "sgd", "rmsprop")
TRAIN_SPLITS = ("train", "trainval")


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
            raise UsageError(f"{algorithm_name} has no setting {key!r}",
                             _nearest_key_hint(key, allowed, algorithm_name))
    _check_values(chosen, defaults)
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


# Longer names people type for the engine's settings, for "did you mean".
SPELLED_OUT = {
    "learning_rate": "lr", "outer_lr": "lr", "meta_lr": "lr", "n_way": "way", "ways": "way",
    "k_shot": "shot", "shots": "shot", "n_shot": "shot", "queries": "query",
    "n_query": "query", "batch_size": "meta_batch", "meta_batch_size": "meta_batch",
    "tasks_per_batch": "meta_batch", "gamma": "lr_decay", "lr_gamma": "lr_decay",
    "step_size": "lr_decay_every", "max_grad_norm": "grad_clip", "clip": "grad_clip",
    "l2": "weight_decay", "image_size": "size", "split": "scheme", "random_seed": "seed",
}


def _nearest_key_hint(key: str, allowed: set[str], algorithm_name: str) -> str:
    names = {name: name for name in allowed}
    names.update({long: short for long, short in SPELLED_OUT.items() if short in allowed})
    close = difflib.get_close_matches(key, sorted(names), n=1)
    if close:
        return f"did you mean {names[close[0]]!r}?"
    return f"see `metactl plugins info {algorithm_name}` for the keys it accepts"


# Engine settings that are counts, with the least value that makes sense.
WHOLE_NUMBERS = {
    "way": 1, "shot": 1, "query": 1, "train_way": 1, "train_shot": 1, "train_query": 0,
    "train_classes": 0, "episodes": 1, "meta_batch": 1, "val_every": 1, "val_episodes": 0,
    "eval_episodes": 1, "seed": 0, "eval_seed": 0, "lr_decay_every": 0, "size": 1,
}
# Engine settings that are real numbers: whether zero is allowed.
REAL_NUMBERS = {"lr": True, "momentum": True, "rmsprop_alpha": True, "weight_decay": True,
                "grad_clip": True, "lr_decay": False}


def check_settings(values: Mapping[str, Any]) -> None:
    """Refuse engine settings of the wrong kind or out of range, e.g. ``{"lr": -1}``."""
    _check_values(values, {})


def _check_config(config: dict[str, Any]) -> None:
    _check_values(config, {})
    if config["optimizer"] not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {config['optimizer']!r}",
                         f"use one of {', '.join(OPTIMIZERS)}")
    if config["train_split"] not in TRAIN_SPLITS:
        raise UsageError(f"unknown train_split {config['train_split']!r}",
                         f"use one of {', '.join(TRAIN_SPLITS)}")
    if config["device"] not in ("auto", "cpu", "cuda") and not str(config["device"]).startswith(
            "cuda:"):
        raise UsageError(f"unknown device {config['device']!r}", "use auto, cpu or cuda")
    if not isinstance(config["augment"], bool):
        raise UsageError(f"setting augment must be true or false, got {config['augment']!r}",
                         "pass --set augment=true")
    if config["amp"] not in (None, "auto", "none", "bf16", "fp16"):
        raise UsageError(f"unknown mixed-precision mode {config['amp']!r}",
                         "use auto, bf16, fp16 or none")


def _check_values(values: Mapping[str, Any], defaults: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse values of the wrong kind or out of range; an algorithm's own numeric settings
    (those whose default is a number) must be finite numbers."""
    numeric = {key for entry in defaults.values() for key, value in entry.items()
               if _is_number(value)}
    for key, value in values.items():
        if key in WHOLE_NUMBERS:
            if not (key == "size" and value is None):  # no size: the card's
                _check_whole(key, value, WHOLE_NUMBERS[key])
        elif key in REAL_NUMBERS:
            _check_real(key, value, zero_allowed=REAL_NUMBERS[key])
        elif key in numeric and not (_is_number(value) and math.isfinite(value)):
            raise UsageError(f"setting {key} must be a finite number, got {value!r}",
                             f"pass e.g. --set {key}=0.1")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_whole(key: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"setting {key} must be a whole number, got {value!r}",
                         f"pass e.g. --set {key}=5")
    if value < least:
        kind = "positive" if least == 1 else "at least 0"
        raise UsageError(f"setting {key} must be {kind}, got {value}",
                         f"pass --set {key}={max(least, 1)} or more")


def _check_real(key: str, value: Any, zero_allowed: bool) -> None:
    if not _is_number(value):
        raise UsageError(f"setting {key} must be a number, got {value!r}",
                         f"pass e.g. --set {key}=0.001")
    if not math.isfinite(value):
        raise UsageError(f"setting {key} must be a finite number, got {value}",
                         f"pass e.g. --set {key}=0.001")
    if value < 0:
        raise UsageError(f"setting {key} must not be negative, got {value}",
                         "pass 0 or a positive number")
    if value == 0 and not zero_allowed:
        raise UsageError(f"setting {key} must be positive, got {value}",
                         "pass a positive number (1 means no change)")
