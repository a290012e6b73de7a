"""RESULTS.md is what `metactl results` renders from the reports under reports/: no figure in
it is typed by hand."""

from __future__ import annotations

from testsupport import REPOSITORY, run_metactl


def test_results_md_is_rendered_from_the_committed_reports():
    checked = run_metactl("results", str(REPOSITORY / "reports"), "-o",
                          str(REPOSITORY / "RESULTS.md"), "--check")
    assert checked.returncode == 0, checked.stderr
