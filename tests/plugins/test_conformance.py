"""Every discovered algorithm builds, takes a meta-step with finite loss and gradients, and
predicts probabilities: the same checks third-party authors get from the pytest plugin."""

from __future__ import annotations

import pytest

from metactl.plugins import load_plugins

NAMES = load_plugins().registry.names()


def test_no_built_in_plugin_is_broken():
    broken = [f"{f.plugin}: {f.error}" for f in load_plugins().failures
              if f.distribution.startswith("metactl ")]
    assert broken == []


@pytest.mark.parametrize("name", NAMES)
def test_algorithm_conforms(name, metactl_conformance):
    metactl_conformance(name)
