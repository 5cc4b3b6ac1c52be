"""edgehaze demo --data DIR: the quickstart on real data (a tiny fake data folder laid out like shared/data)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgehaze.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_rgb(path: Path, img01: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.rint(np.clip(img01, 0, 1) * 255).astype(np.uint8)[:, :, ::-1])


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth clear image with a few edges (not flat: the transmission is recoverable)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.2 + 0.5 * xx, 0.3 + 0.4 * yy, 0.25 + 0.2 * np.sin(6 * xx)], -1)
    for _ in range(3):
        y0, x0 = rng.integers(0, h - 12), rng.integers(0, w - 16)
        img[y0:y0 + 12, x0:x0 + 16] = rng.uniform(0.05, 0.6, 3)
    return img.astype(np.float64)


def make_fake_data(root: Path, h: int = 48, w: int = 64) -> Path:
    """sots-style pairs (I = J t + 1 - t), a test-only sots_indoor/, a 5-scene FRIDA2 folder and a fog drive."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    for folder, names, levels in (("sots_indoor_train", ["1401", "1402", "1403", "1404"], (1, 5)),
                                  ("sots_indoor", ["1400", "1410"], (1,))):
        for name in names:
            clear = _scene(rng, h, w)
            depth = 0.3 + 0.7 * (xx / w) * (0.5 + 0.5 * yy / h)
            _write_rgb(root / folder / "gt" / f"{name}.png", clear)
            for k in levels:
                t = np.exp(-(0.4 + 0.3 * k) * depth)[..., None]
                _write_rgb(root / folder / "hazy" / f"{name}_{k}.png", clear * t + (1 - t))
    for i in range(1, 6):  # every 5th is test: 000005
        stem = f"{i:06d}"
        clear = _scene(rng, h, w)
        depth_cm = (300 + 4000 * yy / h + 50 * xx / w).astype(np.uint16)
        depth_cm[:6] = 50000  # sky
        _write_rgb(root / "frida2" / "clear" / f"{stem}.png", clear)
        (root / "frida2" / "depth_cm").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "frida2" / "depth_cm" / f"{stem}.png"), depth_cm)
        t = np.where(depth_cm >= 50000, 0.0, np.exp(-3.0 / 80.0 * depth_cm / 100.0))[..., None]  # V = 80 m
        _write_rgb(root / "frida2" / "fog_U080" / f"{stem}.png", clear * t + 0.8 * (1 - t))
    for k in range(4):  # a 16:9 "fog drive"
        _write_rgb(root / "video" / "dvd_gopro_fog_frames" / f"frame_{k}_hazy.jpg",
                   0.5 + 0.3 * _scene(rng, 72, 128) + 0.02 * k)
    return root


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    return make_fake_data(tmp_path_factory.mktemp("shared") / "data")


def test_resolve_data_dir_flag_env_and_procedural(fake_data: Path, tmp_path: Path) -> None:
    from edgehaze.demo_real import resolve_data_dir

    assert resolve_data_dir(str(fake_data), False, environ={}) == fake_data.resolve()
    assert resolve_data_dir(None, False, environ={"EDGEHAZE_SHARED": str(fake_data.parent)}) == fake_data.resolve()
    assert resolve_data_dir(None, False, environ={"EDGEHAZE_SHARED": str(tmp_path / "none")}) is None
    assert resolve_data_dir(None, True, environ={"EDGEHAZE_SHARED": str(fake_data.parent)}) is None
    assert resolve_data_dir(None, False, environ={}) is None
    with pytest.raises(ConfigError, match="exclude each other"):
        resolve_data_dir(str(fake_data), True, environ={})
    with pytest.raises(ConfigError, match=r"--data .*: holds neither sots_indoor_train/ nor frida2/.*--procedural"):
        resolve_data_dir(str(tmp_path), False, environ={})


def test_fog_frames_in_numeric_order_and_clips_fit_without_stretching(tmp_path: Path) -> None:
    import cv2

    from edgehaze.demo_real import fit_frame, fog_frames, write_clips

    folder = tmp_path / "video" / "dvd_gopro_fog_frames"
    folder.mkdir(parents=True)
    for k in (0, 1, 2, 9, 10, 11):
        img = np.zeros((36, 64, 3), np.uint8)
        img[:, :32] = 20 * k  # left half encodes the index; the right half stays black
        cv2.imwrite(str(folder / f"frame_{k}_hazy.jpg"), img)
    frames = fog_frames(tmp_path)
    assert [int(p.name.split("_")[1]) for p in frames] == [0, 1, 2, 9, 10, 11]
    vga = fit_frame(cv2.imread(str(frames[3])), (24, 32))  # 16:9 -> 4:3: centre crop, no stretch
    assert vga.shape == (24, 32, 3)
    assert vga[:, :8].mean() > 150 and vga[:, -8:].mean() < 20  # both halves still there, centred
    info = write_clips(frames, {"a": (tmp_path / "a.mp4", (24, 32)), "b": (tmp_path / "b.mp4", (36, 64))}, 10.0)
    for label, (h, w) in (("a", (24, 32)), ("b", (36, 64))):
        cap = cv2.VideoCapture(info[label]["path"])
        n, shape = 0, None
        while True:
            ok, f = cap.read()
            if not ok:
                break
            n, shape = n + 1, f.shape
        cap.release()
        assert n == 6 and shape == (h, w, 3)
    assert not list(tmp_path.glob(".*partial*"))
    assert fog_frames(tmp_path / "nothing") == []


def test_depth_teacher_scenes_take_the_data_folder_and_skip_a_missing_test_set(fake_data: Path, tmp_path: Path) -> None:
    import shutil

    from edgehaze.depth_teacher import real_depth_scenes

    scenes = real_depth_scenes(fake_data.parent, size=(32, 24), val_every=2)  # the folder above data/ works too
    assert len(scenes["test_sots_indoor"]) == 2 and len(scenes["test_frida2"]) == 1
    no_test = tmp_path / "data"
    for name in ("sots_indoor_train", "frida2"):
        shutil.copytree(fake_data / name, no_test / name)
    scenes = real_depth_scenes(no_test, size=(32, 24), val_every=2)
    assert scenes["test_sots_indoor"] == [] and len(scenes["test_frida2"]) == 1
    assert len(scenes["train"]) == 4 and len(scenes["val"]) == 4  # 2 + 2 SOTS, 2 + 2 FRIDA2 (1 test)


def _quality(report: dict, set_name: str, method: str) -> dict:
    return report["quality"][set_name][method]["metrics"]


def test_real_quick_demo_all_stages_prior_row_and_both_stream_fps(fake_data: Path, tmp_path: Path, capsys) -> None:
    from edgehaze.cli import main
    from edgehaze.demo import run_demo

    out = tmp_path / "demo"
    assert main(["demo", "--data", str(fake_data), "--quick", "--out", str(out), "--threads", "1",
                 "--no-progress"]) == 0
    assert "[8/8] writing the report ... done in" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    # the real test sets, each with the prior's row beside the student's
    for set_name in ("sots-indoor", "frida2-U080"):
        for method in ("hazy input", "dark-channel prior", "student FP32", "student INT8"):
            assert f"| {set_name} | {method} |" in md
            assert math.isfinite(_quality(report, set_name, method)["psnr"])
    # test scenes never trained on: FRIDA2's 5th scene is in data/test only
    done = json.loads((out / "data" / "done.json").read_text())
    assert done["splits"]["frida2"]["test"] == ["frida2-000005"]
    for part in ("train", "val"):
        assert not [p for p in (out / "data" / part / "hazy").iterdir() if "000005" in p.name]
    assert "never trained on" in md and "**last** one" in md
    # both artifacts streamed: the VGA artifact and the scale-16 one
    runs = report["stream"]["runs"]
    assert runs["vga"]["fps"] > 0 and runs["1080p"]["fps"] > 0
    assert Path(runs["1080p"]["model"]).name == "student-int8-s16.onnx"
    assert report["stream"]["videos"]["1080p"]["kind"] == "real fog drive"
    assert "student-int8-s16.onnx on the 1080p clip (null sink)" in md
    hd = json.loads((out / "export" / "student-int8-s16.json").read_text())
    assert hd["precision"] == "int8"
    # the synthetic test split's table and the teacher's real-depth quality are there too
    assert report["synthetic_test"]["images"] >= 1 and "| student INT8 |" in md
    assert report["teacher"]["trained"]["test_sots_indoor"]["images"] == 2
    # a second run skips every stage; a procedural demo in the same folder is refused
    assert main(["demo", "--data", str(fake_data), "--quick", "--out", str(out), "--no-progress"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert len(lines) == 8 and all("skipped" in ln for ln in lines)
    with pytest.raises(ConfigError, match="holds a real-quick demo"):
        run_demo(out, quick=True, progress=False, print_fn=lambda s: None)


def test_full_recipe_is_the_config_and_needs_real_data(tmp_path):
    """--full runs REAL_FULL (mode real-full, resumed only as such), whose stage 1 is configs/real_edge-s.yaml;
    without real data it is a one-line error."""
    import yaml

    from edgehaze.demo import run_demo
    from edgehaze.demo_real import REAL, REAL_FULL, RealDemo

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "real_edge-s.yaml").read_text())
    assert cfg["rgb"]["steps"] == REAL_FULL.rgb_steps > REAL.rgb_steps
    assert cfg["model"]["backbone"] == REAL_FULL.backbone
    assert cfg["model"]["backbone_kwargs"] == REAL_FULL.backbone_kwargs
    assert cfg["data"]["crop"] == REAL_FULL.crop and cfg["train"]["batch_size"] == REAL_FULL.batch
    assert cfg["train"]["lr"] == REAL_FULL.lr
    assert cfg["loss"]["stability"] == REAL_FULL.stability > 0 == REAL.stability
    import re

    from edgehaze.demo_real import SOURCES

    text = (Path(__file__).parents[1] / "configs" / "real_edge-s.yaml").read_text()
    rgbd = re.findall(r"--rgbd \$D/(\w+)", text)
    assert rgbd == list(SOURCES), "the config's synth command lists the demo's sources in its order"
    counts = [int(v) for v in re.search(r"--variants ([\d ]+)", text).group(1).split()]
    assert REAL_FULL.variants_for(rgbd) == counts

    data = make_fake_data(tmp_path / "data")
    demo = RealDemo(tmp_path / "run", data, full=True)
    assert demo.sizes is REAL_FULL and demo.mode == "real-full"
    for stage in ("rgb", "fused", "control"):  # the flicker term in every stage that trains the dehazer
        assert demo.train_config_dict(stage)["loss"]["stability"] == REAL_FULL.stability
    assert demo.distill_config_dict()["loss"]["stability"] == REAL_FULL.stability
    with pytest.raises(ConfigError, match="--full is the real-data recipe"):
        run_demo(out=tmp_path / "p", full=True, data=None)
    with pytest.raises(ConfigError, match="--quick and --full"):
        RealDemo(tmp_path / "q", data, quick=True, full=True)


def test_verdict_calls_a_small_fused_gain_a_tie_and_names_a_real_one():
    from edgehaze.demo import TIE_DB, _verdict

    def rows(fused, control):
        return {"rgb": {"psnr": 20.0}, "fused": {"psnr": fused}, "control": {"psnr": control}}

    tie, gains = _verdict(rows(20.53, 20.50))
    assert "a tie" in tie and "helps" in tie and "does not show" in tie
    assert abs(gains["fused_vs_control_db"] - 0.03) < 1e-9
    win, _ = _verdict(rows(20.5 + TIE_DB + 0.1, 20.5))
    assert "the depth teacher helps" in win and "a tie" not in win
    loss, _ = _verdict(rows(20.0, 20.5 + TIE_DB))
    assert "does **not** help" in loss
