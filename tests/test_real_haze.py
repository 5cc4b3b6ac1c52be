"""Real-data path: RGB-D synthesis, transmission recovery, the dark-channel prior, the halo measure."""
from __future__ import annotations

import numpy as np
import pytest


def _scene(h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    clear = rng.uniform(0.05, 0.7, size=(h, w, 3)).astype(np.float32)
    depth = np.linspace(0.1, 1.0, w, dtype=np.float32)[None, :].repeat(h, 0)
    return clear, depth


def test_synthesis_from_an_rgbd_pair_is_exact():
    """A variant without noise/blur/JPEG/patchy fog/clear frames is I = J t + A (1 - t) with the drawn beta and airlight."""
    from edgehaze.data.rgbd import RGBDScene
    from edgehaze.data.rgbd_synth import HazeRecipe, render_variant

    clear, depth = _scene()
    scene = RGBDScene("s", clear, depth, np.ones_like(depth, bool), metric=False, source="test")
    recipe = HazeRecipe(nonhomogeneous=0.0, noise=0.0, jpeg=0.0, blur=0.0, clear=0.0, exposure=(1.0, 1.0))
    hazy, gt, p = render_variant(scene, recipe, np.random.default_rng(3))
    t = np.exp(-p["beta"] * depth.astype(np.float64))[..., None]
    want = clear * t + np.asarray(p["airlight"]) * (1 - t)
    assert np.abs(hazy - want).max() < 1e-6 and np.array_equal(gt, clear)


def test_depth_recovery_inverts_a_synthetic_pair():
    """t from a hazy/clear pair, then relative depth: the depth used to haze it, up to scale."""
    from edgehaze.data.rgbd import depth_from_transmission, estimate_airlight, recover_transmission

    clear, depth = _scene()
    t = np.exp(-1.3 * depth)
    hazy = clear * t[..., None] + 0.9 * (1 - t[..., None])
    assert abs(estimate_airlight(hazy, clear) - 0.9) < 0.011
    t_hat, conf = recover_transmission(hazy, clear, 0.9)
    assert np.abs(t_hat - t).max() < 1e-4 and conf.min() > 0.1
    rel, valid = depth_from_transmission([t_hat], [conf])
    assert valid.all()
    assert np.abs(rel / rel.max() - depth / depth.max()).max() < 1e-3


def test_frida2_and_pair_splits_are_disjoint_and_written_down():
    from edgehaze.data.rgbd import scene_split

    names = [f"{i:06d}" for i in range(1, 67)]
    s = scene_split(names, test_every=5)
    assert s["test"][:2] == ["000005", "000010"] and len(s["test"]) == 13
    assert not (set(s["test"]) & set(s["train"])) and not (set(s["val"]) & set(s["train"]))
    assert len(s["train"]) + len(s["val"]) + len(s["test"]) == 66


def test_dark_channel_prior_matches_a_direct_numpy_computation():
    from scipy import ndimage

    from edgehaze.dcp import DCPParams, dehaze_dcp

    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.9, size=(20, 24, 3)).astype(np.float32)
    p = DCPParams(patch=5, radius=3)
    got, t, a = dehaze_dcp(img, p)
    i = img.astype(np.float64)
    dark = ndimage.minimum_filter(i.min(2), size=5, mode="nearest")
    idx = np.argsort(dark.ravel())[-max(1, int(dark.size * p.top_fraction)):]
    cand = i.reshape(-1, 3)[idx]
    a_ref = cand[np.argmax(cand.sum(1))]
    t0 = 1 - p.omega * ndimage.minimum_filter((i / a_ref).min(2), size=5, mode="nearest")
    g = (0.299 * i[..., 0] + 0.587 * i[..., 1] + 0.114 * i[..., 2])
    box = lambda x: ndimage.uniform_filter(x, size=7, mode="reflect")  # noqa: E731
    ai = (box(g * t0) - box(g) * box(t0)) / (box(g * g) - box(g) ** 2 + p.eps)
    bi = box(t0) - ai * box(g)
    t_ref = box(ai) * g + box(bi)
    j_ref = np.clip((i - a_ref) / np.maximum(t_ref, p.t0)[..., None] + a_ref, 0, 1)
    assert np.allclose(a, a_ref, atol=1e-6)
    assert np.abs(t - t_ref).max() < 1e-3
    assert np.abs(got - j_ref).max() < 2e-3


def test_halo_measure_ranks_a_blurred_edge_below_a_sharp_one():
    import cv2

    from edgehaze.metrics.halo import halo_measure

    gt = np.full((64, 64, 3), 0.2, np.float32)
    gt[:, 32:] = 0.8
    sharp = np.clip(gt * 0.95 + 0.03, 0, 1)          # a global error, edges intact
    blurred = cv2.GaussianBlur(gt, (0, 0), 3)
    hs, hb = halo_measure(sharp, gt)["halo"], halo_measure(blurred, gt)["halo"]
    assert hs < hb / 3, (hs, hb)
    assert np.isnan(halo_measure(np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.float32))["halo"])


def test_synth_rgbd_cli_writes_split_dataset(tmp_path, capsys):
    """edgehaze synth --rgbd on a generic clear/ + depth/ folder: DehazeFormer layout, val split, depth kept."""
    from edgehaze.cli import main
    from edgehaze.imageio import write_image

    src = tmp_path / "src"
    for k in range(8):
        clear, depth = _scene(seed=k)
        write_image(src / "clear" / f"s{k}.png", clear)
        (src / "depth").mkdir(parents=True, exist_ok=True)
        np.save(src / "depth" / f"s{k}.npy", depth * 10)
    out = tmp_path / "out"
    assert main(["synth", "--rgbd", str(src), "--variants", "2", "--out", str(out)]) == 0
    assert len(list((out / "train" / "hazy").glob("*.png"))) == 14
    assert len(list((out / "val" / "GT").glob("*.png"))) == 2
    assert (out / "train" / "depth" / "s0.npy").is_file()
    assert main(["synth", "--rgbd", str(tmp_path / "missing"), "--out", str(out)]) != 0
    assert "--rgbd" in capsys.readouterr().err


def test_synth_rgbd_variants_per_source(tmp_path, capsys):
    """--variants 3 1: three renderings of each scene of the first --rgbd, one of the second's; a count per
    source or one for all, anything else is the one-line error naming --variants."""
    from edgehaze.cli import main
    from edgehaze.imageio import write_image

    for name, n in (("a", 4), ("b", 4)):
        for k in range(n):
            clear, depth = _scene(seed=k + (10 if name == "b" else 0))
            write_image(tmp_path / name / "clear" / f"{name}{k}.png", clear)
            (tmp_path / name / "depth").mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / name / "depth" / f"{name}{k}.npy", depth * 10)
    out = tmp_path / "out"
    args = ["synth", "--rgbd", str(tmp_path / "a"), "--rgbd", str(tmp_path / "b"), "--val-every", "0"]
    assert main(args + ["--variants", "3", "1", "--out", str(out)]) == 0
    names = sorted(p.stem for p in (out / "train" / "hazy").glob("*.png"))
    assert sum(n.startswith("a") for n in names) == 4 * 3 and sum(n.startswith("b") for n in names) == 4 * 1
    assert main(args + ["--variants", "1", "2", "3", "--out", str(tmp_path / "bad")]) != 0
    assert "--variants 1 2 3: give one count, or one per --rgbd (2 given)" in capsys.readouterr().err
