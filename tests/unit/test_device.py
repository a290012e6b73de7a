"""Device settings: what ``auto`` picks per device, what the user and the algorithm override,
and that the chosen paths compute what the plain float32 path computes."""

from __future__ import annotations

import os

import pytest
import torch

from metactl.algorithm import DeviceSettings
from metactl.engine import device as device_module
from metactl.engine.config import ENGINE_DEFAULTS
from metactl.engine.device import Placement, cpu_flags, cpu_has_bf16, placement_for, usable_cpus
from metactl.engine.trainer import build_optimizer
from metactl.errors import UsageError


def place(settings: DeviceSettings | None = None, **overrides) -> Placement:
    return placement_for({**ENGINE_DEFAULTS, "device": "cpu", **overrides},
                         settings or DeviceSettings())


@pytest.fixture(params=[True, False], ids=["cpu-with-bf16", "cpu-without-bf16"])
def bf16_cpu(request, monkeypatch) -> bool:
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: request.param)
    return request.param


def test_bf16_detection_agrees_with_the_cpu_flags():
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this system")
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_auto_picks_bf16_only_where_the_cpu_computes_it_and_channels_last_on_cpus(bf16_cpu):
    placement = place()
    assert placement.mixed_precision == ("bf16" if bf16_cpu else None)
    assert placement.channels_last is True
    assert placement.settings()["amp"] == ("bf16" if bf16_cpu else "none")


def test_the_user_overrides_the_choice(bf16_cpu):
    assert place(amp="none").mixed_precision is None
    assert place(amp="bf16").mixed_precision == "bf16"
    assert place(amp="bf16", channels_last=False).channels_last is False
    assert place(channels_last=True).channels_last is True


def test_an_algorithm_can_pin_float32(bf16_cpu):
    pinned = DeviceSettings(mixed_precision=None, channels_last=False)
    assert place(pinned).mixed_precision is None
    assert place(pinned).channels_last is False
    assert place(pinned, amp="bf16").mixed_precision == "bf16"


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(UsageError, match="fp16"):
        place(amp="fp16")


def test_cpu_autocast_computes_in_bf16_and_close_to_float32():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 26 * 26, 5))
    images = torch.rand(4, 1, 28, 28)
    with place(amp="bf16").autocast():
        reduced = layer(images)
    with place(amp="none").autocast():
        full = layer(images)
    assert reduced.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(reduced.float(), full, atol=0.05, rtol=0.05)


def test_usable_cpus_is_within_what_the_system_has():
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)




@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_optimizer_steps_like_the_plain_one(name):
    """The CUDA path's fused optimizer kernels, checked on the CPU against the plain loop."""
    config = {**ENGINE_DEFAULTS, "optimizer": name, "lr": 0.01, "weight_decay": 1e-4}
    torch.manual_seed(0)
    plain = torch.nn.Linear(6, 3).double()
    fused = torch.nn.Linear(6, 3).double()
    fused.load_state_dict(plain.state_dict())
    optimizers = [build_optimizer(model, config, fused=flag)[0]
                  for model, flag in ((plain, False), (fused, True))]
    inputs = torch.rand(8, 6, dtype=torch.float64)
    for _ in range(3):
        for model, optimizer in zip((plain, fused), optimizers, strict=True):
            optimizer.zero_grad()
            model(inputs).pow(2).mean().backward()
            optimizer.step()
    for mine, theirs in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_the_run_records_what_auto_chose(omniglot_root, tmp_path):
    from testsupport import train_briefly

    settings = {"train_way": 5, "train_query": 5, "query": 5, "val_episodes": 0, "episodes": 1,
                "device": "cpu"}
    _, run, _ = train_briefly("prototypical", settings, omniglot_root, tmp_path / "run")
    recorded = run.read_config()
    assert recorded["amp"] == ("bf16" if cpu_has_bf16() else "none")
    assert recorded["channels_last"] is True
    assert recorded["compile"] is False
