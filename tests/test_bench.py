"""edgehaze bench: timing core, torch and runtime engines, JSON + Markdown output."""
from __future__ import annotations

import json
import math

import pytest

from edgehaze.bench import markdown_table, parse_size, role_of_depth, time_callable
from edgehaze.errors import EdgehazeError


def test_time_callable_orders_statistics_and_counts_calls():
    calls = []
    stats = time_callable(lambda: calls.append(1), warmup=2, runs=7)
    assert len(calls) == 9
    assert stats["runs"] == 7
    assert stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["max_ms"]
    assert stats["fps"] == pytest.approx(1000.0 / stats["median_ms"])


def test_time_callable_measures_sleep():
    import time

    stats = time_callable(lambda: time.sleep(0.01), warmup=0, runs=3)
    assert stats["median_ms"] >= 9.0


def test_time_callable_rejects_zero_runs():
    with pytest.raises(EdgehazeError, match="runs"):
        time_callable(lambda: None, runs=0)


def test_parse_size_and_roles():
    assert parse_size("480x640") == (480, 640)
    with pytest.raises(EdgehazeError, match="HEIGHTxWIDTH"):
        parse_size("640")
    assert role_of_depth(None) == "rgb-only"
    assert role_of_depth("student-s") == "student"
    assert role_of_depth("dav2-l") == "teacher"


def test_bench_cli_writes_json_for_each_engine(tmp_path, capsys):
    import torch

    from _artifacts import make_artifact
    from edgehaze.checkpoint import save_dehazer
    from edgehaze.cli import main
    from edgehaze.models.dehazer import build_dehazer

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_dehazer(ckpt, build_dehazer("edge-xs", depth=None))
    onnx = make_artifact(tmp_path / "art", "tiny", two_graph=False)
    out = tmp_path / "bench.json"
    rc = main(["bench", "--checkpoint", str(ckpt), "--onnx", str(onnx), "--sizes", "48x64", "32x40",
               "--runs", "3", "--warmup", "1", "--threads", "1", "--json", str(out), "--no-progress"])
    assert rc == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {r["engine"] for r in rows} == {"torch-eager", "onnxruntime-fp32"}
    assert len(rows) == 4  # two models x two sizes
    for r in rows:
        assert "error" not in r
        for key in ("median_ms", "p90_ms", "fps"):
            assert math.isfinite(r[key]) and r[key] > 0
        assert r["runs"] == 3
    onnx_row = next(r for r in rows if r["engine"] == "onnxruntime-fp32")
    assert onnx_row["backend"].startswith("onnxruntime/")
    assert data["machine"]["threads"] == 1
    assert any("TensorRT" in n for n in data["notes"])  # no TensorRT here: said, not silently dropped
    table = capsys.readouterr().out
    data_lines = [ln for ln in table.splitlines() if "| 48x64 |" in ln or "| 32x40 |" in ln]
    assert len(data_lines) == 4
    assert any(ln.startswith("| tiny.onnx |") and "onnxruntime-fp32" in ln for ln in data_lines)


def test_bench_teacher_case_and_errors(tmp_path):
    from edgehaze.bench import run_bench

    res = run_bench(teacher="tiny", teacher_backbone="edge-xs", depth_kwargs={"input_size": 28},
                    sizes=[(32, 48)], runs=2, warmup=0, threads=1, progress=False)
    (row,) = res["results"]
    assert row["role"] == "teacher" and row["engine"] == "torch-eager" and row["median_ms"] > 0
    with pytest.raises(EdgehazeError, match="nothing to benchmark"):
        run_bench(progress=False)
    with pytest.raises(EdgehazeError, match="no such file"):
        run_bench(onnx=[tmp_path / "missing.onnx"], progress=False)


def test_markdown_table_shows_errors():
    rows = [{"name": "m", "role": "student", "engine": "onnxruntime-int8", "size": [4, 4], "error": "boom"}]
    assert "boom" in markdown_table(rows, ["note"])
