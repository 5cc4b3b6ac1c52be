"""benchmarks/pareto.py on real data (issue "Real haze" item 7): a tiny sweep trained on a fake synth
folder's train split (images of two sizes, its val/ and test/ poisoned) and scored on the fake real test
sets beside the hazy input and the dark-channel prior, with the data source in the JSON."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _real_folders import fake_real_folders, load_benchmark  # noqa: E402

P = load_benchmark("pareto")
TINY_STUDENT = {"widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]}
SHIPPED = {"apply": "guided", "context": True, "guide_radius": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """Fake shared data + synth output; one extra train pair of another size; val/ and test/ unreadable."""
    from edgehaze.imageio import read_image, write_image

    f = fake_real_folders(tmp_path_factory.mktemp("pareto_real"))
    train = f["synth"] / "train"
    first = sorted((train / "hazy").iterdir())[0]
    for sub in ("hazy", "GT"):  # 56x40 next to the 64x48 pairs: crops are taken per image
        write_image(train / sub / "zz-small.png", read_image(train / sub / first.name)[:40, :56])
    for split in ("val", "test"):  # the sweep must never read these: any read fails
        for path in (f["synth"] / split).rglob("*"):
            if path.is_file():
                path.write_bytes(b"poison: the pareto sweep reads the train split only")
    return f


@pytest.fixture(scope="module")
def swept(folders, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pareto_out")
    before = torch.get_num_threads()
    r = P.sweep(points=["edge-xs:4"], steps=2, batch=2, crop=32, n_train=None, rounds=1, threads=1, out=out,
                sizes={"640x480": (32, 48), "1920x1080": (40, 64)}, calib_n=2, progress=False,
                student_kwargs=TINY_STUDENT, backbone_kwargs=SHIPPED, log=lambda m: None,
                synth=folders["synth"], data=folders["data"], sets=["sots-indoor", "frida2"])
    torch.set_num_threads(before)
    return {"result": r, "out": out}


def _finite(cell: dict, set_name: str) -> bool:
    """PSNR, SSIM (and halo on SOTS: the fake FRIDA2 image has no strong edge, so its halo is None) are numbers."""
    keys = ("psnr", "ssim", "halo") if set_name == "sots-indoor" else ("psnr", "ssim")
    return all(cell[k] is not None and math.isfinite(cell[k]) for k in keys)


def test_real_sweep_scores_every_point_beside_the_prior(folders, swept) -> None:
    r, out = swept["result"], swept["out"]
    assert json.loads((out / "pareto.json").read_text()) == json.loads(json.dumps(r))
    train, test = r["data"]["train"], r["data"]["test"]
    assert train["kind"] == "synth" and train["split"] == "train" and train["root"] == str(folders["synth"].resolve())
    assert train["pairs"] == train["available"] == 11 and train["sizes"] == ["56x40", "64x48"]
    assert test["kind"] == "real" and test["sets"]["sots-indoor"]["images"] == 2 and "frida2-U080" in test["sets"]
    assert r["budget"]["n_train"] == 11 and r["budget"]["backbone_kwargs"] == SHIPPED
    for name in ("sots-indoor", "frida2-U080"):
        assert set(r["baselines"][name]) == {"hazy input", "dark-channel prior"}
        for m in r["baselines"][name].values():
            assert _finite(m, name)
    (p,) = r["points"]
    assert p["test_set"] == "sots-indoor" and p["psnr_at_2x_scale"] is None and p["psnr_1080_framing"] is None
    for name in ("sots-indoor", "frida2-U080"):
        for prec in ("fp32", "int8"):
            cell = p["real"][name][prec]
            assert _finite(cell, name), (name, prec)
    assert p["psnr_fp32"] == pytest.approx(p["real"]["sots-indoor"]["fp32"]["psnr"], abs=1e-3)
    assert all(v > 0 for v in p["fps"].values())
    text = (out / "pareto.md").read_text()
    for needle in (str(folders["synth"].resolve()), "all 11 train pairs", "sots-indoor, dark-channel prior: PSNR",
                   "sots-indoor, hazy input: PSNR", "| sots-indoor | dark-channel prior |",
                   "| frida2-U080 | edge-xs:4 INT8 |", "halo FP32", '"guide_radius": 4'):
        assert needle in text, needle
    assert "| edge-xs:4 |" in text and " - | - |" in text  # no @2x / 1080p framing columns on real data
    svg = (out / "pareto.svg").read_text()
    assert svg.startswith("<svg") and "dark-channel prior" in svg


def test_real_numbers_are_the_quality_benchmarks(folders, swept) -> None:
    """FP32 is scored as benchmarks/quality.py scores a checkpoint; the shipped backbone kwargs reached it."""
    from edgehaze.checkpoint import load_dehazer
    from edgehaze.data.runners import make_runner
    from edgehaze.quality import score_set, sots_indoor

    (p,) = swept["result"]["points"]
    scores, _ = score_set({"m": make_runner(p["checkpoint"], threads=1)}, sots_indoor(folders["data"]), progress=False)
    assert scores["m"].metrics["psnr"] == pytest.approx(p["real"]["sots-indoor"]["fp32"]["psnr"], abs=1e-3)
    model, _meta = load_dehazer(p["checkpoint"])
    assert model.backbone.scale == 4 and model.depth.pool == 4


def test_crops_come_from_each_image_of_its_own_size() -> None:
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in ((20, 30), (16, 18), (25, 16))]
    s = P.CropSampler(data, crop=16)
    assert not s.stacked
    x, t = s.sample(6, torch.Generator().manual_seed(0))
    assert x.shape == t.shape == (6, 3, 16, 16) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    for crop in x:  # every crop is a window of one of the images (uint8 kept until cropped)
        u8 = np.rint(crop.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert any((np.lib.stride_tricks.sliding_window_view(h, (16, 16, 3)) == u8).all(axis=(-3, -2, -1)).any()
                   for h, _ in data)
    with pytest.raises(Exception, match="smaller than the 17px crop"):
        P.CropSampler(data, crop=17)


def test_synth_subset_is_seeded_and_the_cli_checks_its_flags(folders, monkeypatch) -> None:
    a, src = P.load_synth_pairs(folders["synth"], 4, 32, seed=3, log=lambda m: None)
    b, _ = P.load_synth_pairs(folders["synth"], 4, 32, seed=3, log=lambda m: None)
    assert src["pairs"] == 4 and src["available"] == 11 and a[0][0].dtype == np.uint8
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    monkeypatch.delenv("EDGEHAZE_SHARED", raising=False)
    with pytest.raises(SystemExit, match="give --data DIR"):
        P.main(["--synth", str(folders["synth"])])
    with pytest.raises(SystemExit, match="leave out 'scale'"):
        P.main(["--backbone-kwargs", '{"scale": 2}'])
