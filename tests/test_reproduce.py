"""benchmarks/reproduce.py: the ordering checks on hand-made numbers, and a tiny end-to-end run."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from edgehaze.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("edgehaze_reproduce", ROOT / "benchmarks" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


R = _load()


# ---------------------------------------------------------------- the ordering check
def test_check_ordering_statuses():
    # clearly higher on every seed
    c = R.check_ordering({0: 20.0, 1: 20.5, 2: 21.0}, {0: 19.0, 1: 19.6, 2: 20.1})
    assert c["status"] == "reproduced" and c["n"] == 3 and c["wins"] == 3
    assert c["diff_mean"] == pytest.approx(0.933333, abs=1e-5)
    # lower on the mean: not reproduced
    c = R.check_ordering({0: 19.0, 1: 19.2}, {0: 19.5, 1: 19.4})
    assert c["status"] == "not reproduced" and c["diff_mean"] == pytest.approx(-0.35)
    # higher on the mean but one seed disagrees: within noise
    c = R.check_ordering({0: 20.0, 1: 18.0, 2: 21.0}, {0: 19.0, 1: 19.5, 2: 19.0})
    assert c["status"] == "within noise" and c["wins"] == 2
    # higher on every seed but by less than the spread of the paired differences
    c = R.check_ordering({0: 20.01, 1: 21.0}, {0: 20.0, 1: 20.0})
    assert c["status"] == "within noise"
    # only common, finite seeds count
    c = R.check_ordering({0: 20.0, 1: float("nan"), 5: 30.0}, {0: 19.0, 1: 18.0})
    assert c["n"] == 1 and c["status"] == "reproduced"
    assert R.check_ordering({}, {0: 1.0})["status"] == "missing"


def test_sentence_says_not_reproduced_from_the_numbers():
    o = next(x for x in R.PAPER_ORDERINGS if (x.higher, x.lower) == ("full", "cfe-dai-asg"))
    bad = R.ordering_sentence(o, R.check_ordering({0: 20.0}, {0: 20.4}), "procedural")
    assert "full < cfe-dai-asg here by 0.40 dB" in bad and "not reproduced" in bad and "Table 3" in bad
    good = R.ordering_sentence(o, R.check_ordering({0: 21.0}, {0: 20.4}), "procedural")
    assert "not" not in good and "reproduced" in good


def _run(seed, rows):
    return {"seed": seed, "run": "x", "cpu_s": 1.0,
            "rows": {k: {"procedural": {"psnr": v, "ssim": 0.9, "psnr_y": v + 1}} for k, v in rows.items()}}


def test_results_and_report_from_hand_made_runs():
    runs = [_run(0, {"rgb": 20.0, "full": 21.0, "cfe-dai": 20.5, "cfe-dai-asg": 21.3}),
            _run(1, {"rgb": 20.2, "full": 21.1, "cfe-dai": 20.6, "cfe-dai-asg": 21.5})]
    res = R.build_results(runs, R.QUICK, [0, 1], ["rgb", "full", "cfe-dai", "cfe-dai-asg"], ["procedural"],
                          teacher={}, wall=12.0)
    psnr = res["table"]["full"]["procedural"]["psnr"]
    assert psnr["mean"] == pytest.approx(21.05) and psnr["min"] == 21.0 and psnr["max"] == 21.1
    assert psnr["std"] == pytest.approx(math.sqrt(0.005))
    by_pair = {(c["higher"], c["lower"]): c for c in res["orderings"] if c["kind"] == "paper"}
    assert by_pair[("full", "rgb")]["status"] == "reproduced"
    assert by_pair[("cfe-dai-asg", "cfe-dai")]["status"] == "reproduced"
    assert by_pair[("full", "cfe-dai-asg")]["status"] == "not reproduced"
    # rows not run give no claim at all
    assert ("no-zc", "rgb") not in by_pair
    md = R.markdown(res)
    assert "full < cfe-dai-asg here by 0.35 dB" in md and "**not reproduced**" in md
    assert "21.05 ± 0.07 [21.00, 21.10]" in md
    assert "3 reproduced, 1 not reproduced (of 4 checks)" in md


def test_int8_drop_and_row_selection():
    runs = [_run(0, {"onnx-fp32": 20.0, "onnx-int8": 19.9}), _run(1, {"onnx-fp32": 20.0, "onnx-int8": 19.0})]
    res = R.build_results(runs, R.QUICK, [0, 1], ["int8"], ["procedural"], teacher={}, wall=1.0)
    (c,) = res["int8"]
    assert c["drop_db"] == pytest.approx(0.55) and c["ok"] is False and "**over**" in c["sentence"]
    assert R.select_rows(["int8"], quick=False) == ["full", "student", "int8"]
    assert R.select_rows(None, quick=True) == list(R.QUICK_ROWS)
    with pytest.raises(ConfigError, match="--only nope"):
        R.select_rows(["nope"], quick=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert R.main(["--out", str(tmp_path / "r"), "--only", "nope", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown row" in err[0]
    assert R.main(["--out", str(tmp_path / "r"), "--steps", "0"]) == 2


def test_a_folder_is_only_resumed_with_the_same_budget(tmp_path):
    R.Reproduction(tmp_path, R.QUICK, [0], ["rgb"], None, progress=False).check_plan()
    R.Reproduction(tmp_path, R.QUICK, [0, 1], ["rgb"], None, progress=False).check_plan()  # same budget: fine
    other = R.Reproduction(tmp_path, R.Budget(steps=3), [0], ["rgb"], None, progress=False)
    with pytest.raises(ConfigError, match="another budget"):
        other.check_plan()


# ---------------------------------------------------------------- end to end
# ~7 s on an idle 2-core machine (~30 s under heavy load): not marked slow
def test_quick_end_to_end_and_resume(tmp_path):
    out = tmp_path / "repro"
    args = ["--out", str(out), "--quick", "--steps", "2", "--only", "rgb", "full", "--no-progress"]
    assert R.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    for row in ("rgb", "full"):
        for m in ("psnr", "ssim", "psnr_y"):
            assert math.isfinite(res["table"][row]["procedural"][m]["mean"])
    # SOTS rows are checked too when EDGEHAZE_SHARED is set (as in CI): pick the procedural one
    (check,) = [
        c for c in res["orderings"] if (c["higher"], c["lower"]) == ("full", "rgb") and c["split"] == "procedural"
    ]
    d = res["table"]["full"]["procedural"]["psnr"]["mean"] - res["table"]["rgb"]["procedural"]["psnr"]["mean"]
    assert check["diff_mean"] == pytest.approx(d)
    expected = "not reproduced" if d <= 0 else ("within noise" if d < R.TIE_DB else "reproduced")
    assert check["status"] == expected
    assert check["sentence"] in md
    for row in ("rgb", "full"):
        rec = json.loads((out / "seed0" / row / "result.json").read_text())
        assert rec["config"]["seed"] == 0 and (out / "seed0" / row / "run.log").is_file()
    assert math.isfinite(json.loads((out / "seed0" / "full" / "result.json").read_text())["depth_effect"])
    assert "depth effect" in md
    # resumable: nothing finished is redone
    stamp = (out / "seed0" / "full" / "result.json").stat().st_mtime_ns
    assert R.main(args) == 0
    assert (out / "seed0" / "full" / "result.json").stat().st_mtime_ns == stamp
