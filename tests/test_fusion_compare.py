"""benchmarks/fusion_compare.py (issue 20 item 4): a tiny end-to-end run on a fake data folder
(every way of using depth against the control, scores beside the hazy input and the dark-channel
prior, costs, resume), the speed estimate, the paired gains, and the errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _real_folders import fake_real_folders, load_benchmark  # noqa: E402

C = load_benchmark("fusion_compare")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    return fake_real_folders(tmp_path_factory.mktemp("fusion_compare"))


def _args(folders: dict, out: Path, *extra: str) -> list:
    return ["--out", str(out), "--data", str(folders["data"]), "--synth", str(folders["synth"]), "--quick",
            "--seeds", "0", *extra]


@pytest.fixture(scope="module")
def finished(folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "cmp"
    assert C.main(_args(folders, out, "--cost-only", "edge-s")) == 0
    return out


def test_end_to_end_every_row_scored_beside_the_baselines(finished):
    r = json.loads((finished / "results.json").read_text())
    assert not r["partial"] and r["test_set"] == "sots-indoor"
    assert set(r["baselines"]) == {"hazy input", "dark-channel prior"}
    assert r["baselines"]["hazy input"]["images"] == 2  # the two fake SOTS-indoor test pairs
    for backbone in ("edge-xs", "coa-r"):
        rows = r["table"][backbone]["rows"]
        assert list(rows) == ["control", "full", "input-channel", "selfpromer"]
        for name, cell in rows.items():
            assert cell["psnr"]["n"] == 1 and cell["ssim"]["n"] == 1
            assert cell["cost"]["params"] > 0 and cell["cost"]["flops"] > 0
            if name != "control":  # a fused row: its own gain over the control of the same seed
                got = cell["psnr_by_seed"]["0"] - rows["control"]["psnr_by_seed"]["0"]  # JSON keys
                assert cell["vs_control"]["diff_mean"] == pytest.approx(got)
                assert cell["depth_effect"]["n"] == 1
                assert cell["cost"]["params"] > rows["control"]["cost"]["params"]
    # the cost-only backbone: listed with its cost, never trained
    assert [c["backbone"] for c in r["cost_only"]] == ["edge-s"]
    assert not (finished / "edge-s").exists()
    # every row starts from its seed's stage 1 and keeps the last checkpoint; validation on val, never test
    run = json.loads((finished / "coa-r" / "seed0" / "selfpromer" / "result.json").read_text())
    cfg = run["config"]
    assert cfg["fused"]["init"].endswith("coa-r/seed0/stage1/rgb/last.safetensors")
    assert cfg["data"]["val_split"] == "val" and cfg["model"]["fusion"] == "selfpromer"
    assert cfg["fused"]["lr"] == C.RECIPES["coa-r"].lr / 2
    text = (finished / "report.md").read_text()
    for needle in ("| coa-r | input-channel |", "dark-channel prior", "## Not trained here (cost only)",
                   "| edge-s |", "PromptHaze has no public code", "**last**"):
        assert needle in text, needle


def test_resume_redoes_nothing_and_a_changed_budget_is_refused(folders, finished, capsys):
    result = finished / "edge-xs" / "seed0" / "full" / "result.json"
    before = result.stat().st_mtime_ns
    assert C.main(_args(folders, finished, "--cost-only", "edge-s")) == 0
    assert result.stat().st_mtime_ns == before
    assert C.main(_args(folders, finished, "--report-only")) == 0
    assert C.main(_args(folders, finished, "--stage1-steps", "3")) == 2
    assert "another budget" in capsys.readouterr().err
    assert C.main(_args(folders, finished, "--backbones", "edge-xs")) == 2  # dropping coa-r: another --out
    assert "drop a backbone" in capsys.readouterr().err


def test_a_backbone_added_to_a_finished_comparison_keeps_the_runs_done(folders, tmp_path):
    out = tmp_path / "cmp"
    assert C.main(_args(folders, out, "--backbones", "edge-xs", "--cost-only", "none", "--rows", "control")) == 0
    result = out / "edge-xs" / "seed0" / "control" / "result.json"
    before = result.stat().st_mtime_ns
    assert C.main(_args(folders, out, "--backbones", "edge-xs,edge-s", "--cost-only", "none", "--rows", "control")) == 0
    assert result.stat().st_mtime_ns == before
    r = json.loads((out / "results.json").read_text())
    assert set(r["table"]) == {"edge-xs", "edge-s"}
    assert json.loads((out / "plan.json").read_text())["budget"]["backbones"] == ["edge-xs", "edge-s"]


def test_speed_estimate_adds_up_the_measured_steps(folders, tmp_path, capsys):
    budget = C.QUICK
    est = C.estimate(budget, [0, 1], ["control", "input-channel"], test_images=2, test_size=(48, 64),
                     log=lambda _m: None)
    for backbone, entry in est["backbones"].items():
        rows = entry["rows"]
        assert rows["control"]["step_s"] == rows["stage1"]["step_s"] > 0
        secs = budget.stage1_steps * rows["stage1"]["step_s"] + 2 * budget.val_limit * rows["stage1"]["eval_s"]
        secs += budget.stage2_steps * rows["control"]["step_s"] + (2 * budget.val_limit + 2) * rows["control"]["eval_s"]
        secs += (budget.stage2_steps * rows["input-channel"]["step_s"]
                 + (2 * budget.val_limit + 2 * 2) * rows["input-channel"]["eval_s"])
        assert entry["hours"] == pytest.approx(2 * secs / 3600)
    assert C.main(_args(folders, tmp_path / "speed", "--speed", "--backbones", "coa-r", "--rows", "control")) == 0
    assert "coa-r: stage1" in capsys.readouterr().out
    assert not (tmp_path / "speed").exists()  # nothing trained or written


def test_paired_gain_and_verdicts_from_hand_made_runs():
    def run(backbone, seed, name, psnr):
        return {"backbone": backbone, "seed": seed, "run": name, "scores": {"psnr": psnr, "ssim": 0.5, "halo": 1.0}}

    runs = [run("coa", s, "control", 20.0 + s) for s in range(3)]
    runs += [run("coa", s, "full", 20.3 + s + 0.01 * s) for s in range(3)]  # +0.30, +0.31, +0.32: better
    runs += [run("coa", s, "input-channel", 20.0 + s + (0.1 if s else -0.1)) for s in range(3)]  # mixed
    budget = C.Budget(backbones=("coa",))
    r = C.build_results(runs, budget, [0, 1, 2], ["control", "full", "input-channel"], {}, {}, {}, [], None, False)
    rows = r["table"]["coa"]["rows"]
    assert rows["full"]["vs_control"]["diff_mean"] == pytest.approx(0.31)
    assert rows["full"]["vs_control"]["wins"] == 3 and rows["input-channel"]["vs_control"]["wins"] == 2
    assert rows["control"]["psnr"]["mean"] == pytest.approx(21.0)
    text = C.markdown(r)
    assert "| coa | full |" in text and "+0.31 ± 0.01 (3/3 seeds > 0) | better |" in text
    assert "| coa | input-channel |" in text and "within noise" in text


def test_errors_name_the_flag(folders, tmp_path, capsys):
    assert C.main(_args(folders, tmp_path / "a", "--backbones", "nope")) == 2
    assert "--backbones nope: no training recipe" in capsys.readouterr().err
    assert C.main(_args(folders, tmp_path / "b", "--rows", "full")) == 2
    assert "--rows: 'control' is needed" in capsys.readouterr().err
    bad = ["--out", str(tmp_path / "c"), "--data", str(folders["data"]), "--synth", str(tmp_path), "--quick"]
    assert C.main(bad) == 2
    assert "no train/hazy/" in capsys.readouterr().err
