"""Outdoor haze data: the depth proxy, Cityscapes densification, identity pairs, light haze."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edgehaze.data import outdoor
from edgehaze.data.rgbd import RGBDScene, detect_rgbd_layout
from edgehaze.data.rgbd_synth import HazeRecipe, _rng, load_source, make_rgbd_dataset, render_variant


def _sky_ground_image(h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth bright-blue sky over a textured grey-brown ground (horizon at 40% of the height)."""
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), np.float32)
    hz = int(0.4 * h)
    img[:hz] = [0.55, 0.7, 0.95]
    img[hz:] = np.clip(np.array([0.35, 0.3, 0.25]) + 0.15 * rng.standard_normal((h - hz, w, 1)), 0, 1)
    return img


def test_geometric_depth_puts_sky_far_and_ground_near():
    img = _sky_ground_image()
    depth, sky = outdoor.geometric_depth(img)
    h = img.shape[0]
    assert sky[: int(0.35 * h)].mean() > 0.95 and sky[int(0.45 * h):].mean() < 0.05
    assert depth[sky].min() >= outdoor.FAR_M - 1e-3
    ground = depth[int(0.5 * h):, :].mean(axis=1)
    assert np.all(np.diff(ground) <= 1e-6), "the ground comes nearer towards the bottom of the frame"
    assert depth[-1].max() < 10.0 < depth[int(0.45 * h)].min()


def test_densified_disparity_has_no_holes_and_keeps_measured_values():
    rng = np.random.default_rng(1)
    h, w = 40, 60
    disp = np.tile(np.linspace(5.0, 60.0, h)[:, None], (1, w)).astype(np.float32)
    valid = rng.random((h, w)) > 0.3
    valid[:6] = False                     # no measurement in the sky rows
    valid[20:24, 10:30] = False           # an occlusion hole
    sky = np.zeros((h, w), bool)
    sky[:4] = True
    dense = outdoor.densify_disparity(np.where(valid, disp, 0.0), valid, sky)
    assert np.isfinite(dense).all()
    assert np.array_equal(dense[valid], disp[valid])
    assert np.all(dense[sky] == 0.0), "sky is infinitely far"
    hole = ~valid & ~sky
    assert (dense[hole] > 0).all(), "every non-sky hole is filled"
    occl = dense[20:24, 10:30]
    assert occl.min() >= disp[19:25].min() - 1e-3 and occl.max() <= disp[19:25].max() + 1e-3


def test_cityscapes_scenes_read_from_the_documented_layout(tmp_path):
    import cv2

    h, w = 32, 64
    for d in ("clear", "disparity", "camera"):
        (tmp_path / d).mkdir()
    img = (_sky_ground_image(h, w) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "clear" / "x_000001_000019.png"), img[:, :, ::-1])
    disp_px = np.tile(np.linspace(1.0, 40.0, h)[:, None], (1, w))
    raw = (disp_px * 256 + 1).astype(np.uint16)
    raw[: h // 3] = 0  # sky: no disparity
    cv2.imwrite(str(tmp_path / "disparity" / "x_000001_000019.png"), raw)
    (tmp_path / "camera" / "x_000001_000019.json").write_text(json.dumps(
        {"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 2000.0}}))
    assert detect_rgbd_layout(tmp_path) == "cityscapes"
    (scene,) = outdoor.load_cityscapes_scenes(tmp_path)
    assert scene.metric and scene.sky is not None and np.isfinite(scene.depth).all()
    row = h - 1
    expect = 0.2 * 2000.0 / ((raw[row, 0] - 1) / 256.0)
    assert scene.depth[row, 0] == pytest.approx(expect, rel=1e-4)
    assert scene.depth[0].min() > scene.depth[row].max()


def _scene(metric: bool = True) -> RGBDScene:
    img = _sky_ground_image(48, 64)
    depth, sky = outdoor.geometric_depth(img)
    return RGBDScene(name="s", clear=img, depth=depth if metric else depth / depth.max(), valid=~sky,
                     metric=metric, source="test", sky=sky)


def test_clear_frames_are_exact_identity_pairs():
    recipe = replace(HazeRecipe(), clear=1.0)
    for k in range(3):
        hazy, gt, params = render_variant(_scene(), recipe, _rng(0, "s", k))
        assert params["clear_frame"] is True
        assert np.array_equal(hazy, gt)


def test_visibility_reaches_light_haze():
    recipe = HazeRecipe()
    assert recipe.visibility_m[1] >= 20000.0 and recipe.visibility_m[0] <= 50.0
    light = replace(recipe, clear=0.0, visibility_m=(20000.0, 20000.0), nonhomogeneous=0.0, noise=0.0, jpeg=0.0,
                    blur=0.0, sky_depth_m=(3000.0, 3000.0))
    sc = _scene()
    hazy, gt, params = render_variant(sc, light, _rng(0, "s", 0))
    ground = ~sc.sky
    assert np.abs(hazy - gt)[ground].mean() * 255 < 3.0, "20 km visibility barely changes the scene"
    dense = replace(light, visibility_m=(50.0, 50.0))
    hazy_d, gt_d, _ = render_variant(sc, dense, _rng(0, "s", 0))
    assert np.abs(hazy_d - gt_d)[ground].mean() * 255 > 20.0


def test_photos_folder_is_a_source_split_by_its_own_rule(tmp_path):
    import cv2

    for k in range(20):
        sub = tmp_path / ("setA" if k % 2 else "setB")
        sub.mkdir(exist_ok=True)
        img = (_sky_ground_image(40, 56) * 255).astype(np.uint8)
        cv2.imwrite(str(sub / f"p{k:02d}.jpg"), img[:, :, ::-1])
    src = load_source(tmp_path)
    assert src.layout == "photos" and src.test_every == 10 and len(src.scenes) == 20
    assert {s.name.split("-")[0] for s in src.scenes} == {"setA", "setB"}
    counts = make_rgbd_dataset([src], tmp_path / "out", variants=1, progress=False)
    assert counts["test"] == 2 and counts["val"] == 2 and counts["train"] == 16
    shares = json.loads((tmp_path / "out" / "synth.json").read_text())["train_shares"]
    assert shares == {tmp_path.name: {"pairs": 16, "clear_frames": shares[tmp_path.name]["clear_frames"], "share": 1.0}}
