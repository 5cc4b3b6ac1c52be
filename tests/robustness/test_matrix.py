"""The fast subset of the robustness matrix (benchmarks/robustness.py) in the default suite.

The whole matrix (every command x every corpus entry, the 8000x8000 image,
train/distill/export end to end) is ``python benchmarks/robustness.py``; it
is marked slow here.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _runner():
    name = "_edgehaze_robustness_runner"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "robustness.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_fast_matrix_has_no_failures(tmp_path):
    rob = _runner()
    summary, results = rob.run_matrix(tmp_path, fast=True, inprocess=True, log=lambda _m: None)
    failures = [f"{r.id}: {r.reason}\n{r.output[-600:]}" for r in results if r.outcome == rob.FAILURE]
    assert not failures, "\n\n".join(failures)
    commands = {r.command for r in results if r.outcome != rob.SKIPPED}
    assert {"dehaze", "eval", "synth", "stream", "api"} <= commands
    assert summary["handled"] >= 5 and summary["clean_errors"] >= 8
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["summary"] == summary and len(report["cells"]) == len(results)
    assert "| cell | outcome |" in (tmp_path / "report.md").read_text()


def test_judge_flags_tracebacks_secrets_and_unnamed_errors(tmp_path):
    """The judge itself: a cell that prints a traceback / the password / a nameless error fails."""
    rob = _runner()
    corpus = type("C", (), {"SECRET_VALUE": "hunter2", "marker": tmp_path / "marker"})()

    def cell(code: str, **kw):
        c = rob.Cell("t", "api", "x", [], kind="api", **kw)
        c.argv = lambda: [sys.executable, "-c", code]  # type: ignore[method-assign]
        return rob.run_cell(c, corpus)

    assert cell("raise ValueError('boom')").reason.startswith("traceback")
    assert "password" in cell("import sys; print('rtsp://u:hunter2@h'); sys.exit(2)").reason
    assert "names none" in cell("import sys; print('error: bad'); sys.exit(2)", names=("clip.mp4",)).reason
    assert cell("import sys; print('error: clip.mp4 is bad'); sys.exit(2)", names=("clip.mp4",)).outcome == rob.CLEAN
    multi = cell("import sys; print('x: error: clip.mp4 bad\\n\\t(1) try this\\n\\t(2) or that', file=sys.stderr); sys.exit(2)",
                 names=("clip.mp4",))
    assert "spans 3 lines" in multi.reason
    hang = cell("import time; time.sleep(30)", timeout=1.0)
    assert hang.outcome == rob.FAILURE and "hang" in hang.reason
    (tmp_path / "w").mkdir()
    partial = cell(f"open({str(tmp_path / 'w' / '.out.png.abc.tmp')!r}, 'w')", watch=[tmp_path / "w"],
                   expect=(rob.HANDLED,))
    assert "partial" in partial.reason


@pytest.mark.slow
def test_whole_matrix(tmp_path):
    rob = _runner()
    summary, results = rob.run_matrix(tmp_path, fast=False, huge=False, log=lambda _m: None)
    failures = [f"{r.id}: {r.reason}" for r in results if r.outcome == rob.FAILURE]
    assert not failures, "\n".join(failures)
