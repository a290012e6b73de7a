"""Every built-in algorithm has its page under docs/algorithms/, citing its paper."""

from __future__ import annotations

import pytest
from testsupport import REPOSITORY

from metactl.plugins import load_plugins

BUILT_IN = [entry for entry in load_plugins().registry.entries()
            if entry.distribution.startswith("metactl ")]


@pytest.mark.parametrize("entry", BUILT_IN, ids=[entry.algorithm.name for entry in BUILT_IN])
def test_each_built_in_algorithm_has_a_documentation_page(entry):
    algorithm = entry.algorithm
    page = REPOSITORY / "docs" / "algorithms" / f"{algorithm.name}.md"
    assert page.is_file(), f"write {page.relative_to(REPOSITORY)}"
    text = page.read_text(encoding="utf-8")
    assert f"(`{algorithm.name}`)" in text.splitlines()[0]
    first_author = algorithm.paper.split()[0].rstrip(",")
    assert first_author in text, f"{page.name} does not cite {algorithm.paper}"
    for section in ("## What it computes", "## How it maps onto the plugin API",
                    "## Hyperparameters", "## Results"):
        assert section in text, f"{page.name} lacks a {section[3:]!r} section"
