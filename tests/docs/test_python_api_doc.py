"""docs/python-api.md: its example runs as written, on the real Omniglot store."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from testsupport import REPOSITORY

PAGE = REPOSITORY / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
def test_the_example_runs_as_written(omniglot_root, tmp_path, monkeypatch):
    example = python_blocks(PAGE.read_text(encoding="utf-8"))[1]
    assert "metactl.train(" in example and "metactl.evaluate(" in example
    monkeypatch.setenv("METACTL_HOME", str(omniglot_root))
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(example, str(PAGE), "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("finished {'metric': 'accuracy'")
    accuracy = float(re.match(r"accuracy ([\d.]+)% ± [\d.]+ 50$", lines[1]).group(1))
    assert accuracy > 40, lines[1]  # chance is 20%; the untrained network scores about 57%
    assert lines[2].startswith("cosine distance: accuracy ")
    records, episodes, torch_version = lines[3].split()
    assert int(records) > 0 and episodes == "30" and torch_version[0].isdigit()
    run = tmp_path / "runs" / "api-example"
    assert (run / "evaluation-test-5way-1shot.json").is_file()
    assert not list(run.glob("evaluation-*cosine*"))  # record=False writes nothing
