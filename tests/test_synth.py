"""Haze synthesis, depth conversions, procedural scenes and ``edgehaze synth``."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgehaze.cli import main
from edgehaze.data.layouts import find_pairs
from edgehaze.data.procedural import generate_scene, make_procedural_dataset, render_scene
from edgehaze.data.synthesis import (
    apply_haze,
    depth_from_inverse,
    invert,
    load_depth,
    make_hazy_dataset,
    normalise_depth,
    sample_params,
    synthesize,
    transmission,
)
from edgehaze.errors import EdgehazeError
from edgehaze.imageio import read_image, write_image


# ------------------------------------------------------------------ the model
def test_invert_is_exact_given_t_and_a() -> None:
    rng = np.random.default_rng(0)
    clear = rng.random((9, 11, 3))
    depth = rng.random((9, 11)) * 3
    for airlight in (0.83, [0.9, 0.8, 0.75]):
        t = transmission(depth, 0.9)
        hazy = apply_haze(clear, t, airlight)
        assert np.abs(hazy - clear).max() > 0.05  # haze really changed it
        np.testing.assert_allclose(invert(hazy, t, airlight), clear, atol=1e-12)


def test_haze_limits_and_monotone_in_depth() -> None:
    clear = np.zeros((1, 3, 3))
    depth = np.array([[0.0, 1.0, 1e3]])
    hazy, t = synthesize(clear, depth, beta=1.0, airlight=0.8)
    assert t[0, 0] == 1.0 and hazy[0, 0].max() == 0.0  # no haze at zero depth
    assert abs(t[0, 1] - np.exp(-1.0)) < 1e-6
    np.testing.assert_allclose(hazy[0, 2], 0.8, atol=1e-6)  # far away: airlight only
    with pytest.raises(EdgehazeError, match="depth map is"):
        synthesize(np.zeros((4, 4, 3)), np.zeros((4, 5)), 1.0, 0.8)


def test_depth_conversions() -> None:
    inv = np.array([[4.0, 2.0], [1.0, 0.0]])  # large = near
    d = depth_from_inverse(inv)
    assert d[0, 0] == 0.0 and d[1, 1] == 1.0 and d[0, 1] < d[1, 0]
    assert not depth_from_inverse(np.full((2, 2), 3.0)).any()
    n = normalise_depth(np.array([[1.0, 5.0], [10.0, np.inf]]))
    np.testing.assert_allclose(n, [[0.1, 0.5], [1.0, 1.0]])


def test_load_depth_formats(tmp_path: Path) -> None:
    import cv2

    d = np.array([[1.5, 2.0], [3.0, 4.25]], np.float32)
    np.save(tmp_path / "a.npy", d)
    np.testing.assert_array_equal(load_depth(tmp_path / "a.npy"), d)
    mm = (d * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "b.png"), mm)
    np.testing.assert_allclose(load_depth(tmp_path / "b.png", scale=0.001), d, atol=1e-6)
    cv2.imwrite(str(tmp_path / "c.png"), np.array([[10, 20], [30, 255]], np.uint8))
    np.testing.assert_allclose(load_depth(tmp_path / "c.png", scale=0.1), [[1, 2], [3, 25.5]], atol=1e-5)
    inv = load_depth(tmp_path / "c.png", kind="inverse")
    assert inv[1, 1] == 0.0 and inv[0, 0] == 1.0  # 255 nearest in a disparity map
    with pytest.raises(EdgehazeError, match="not found"):
        load_depth(tmp_path / "zzz.npy")


def test_params_deterministic_and_in_range() -> None:
    a = [sample_params(5, i) for i in range(50)]
    assert a == [sample_params(5, i) for i in range(50)]
    assert a != [sample_params(6, i) for i in range(50)]
    betas = np.array([b for b, _ in a])
    airs = np.array([x for _, x in a])
    assert 0.6 <= betas.min() and betas.max() <= 1.8 and betas.std() > 0.2
    assert 0.7 <= airs.min() and airs.max() <= 1.0
    assert np.all(airs[:, 0] == airs[:, 1])  # grey without tint
    _, tinted = sample_params(5, 0, tint=0.05)
    assert len(set(tinted)) == 3
    with pytest.raises(EdgehazeError, match="--airlight"):
        sample_params(0, 0, airlight=(0.5, 1.5))


# ------------------------------------------------------------------ procedural
def test_procedural_deterministic_and_varied() -> None:
    rgb, depth = generate_scene(3, 48, 64)
    rgb2, depth2 = generate_scene(3, 48, 64)
    assert rgb.shape == (48, 64, 3) and depth.shape == (48, 64)
    assert rgb.dtype == np.float32 and depth.dtype == np.float32
    assert np.array_equal(rgb, rgb2) and np.array_equal(depth, depth2)
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    others = [generate_scene(s, 48, 64) for s in range(4, 10)]
    assert all(not np.array_equal(rgb, o[0]) for o in others)
    # scenes really vary: mean colour and depth layout differ between seeds
    assert np.std([o[0].mean() for o in others]) > 0.01
    assert np.std([np.median(o[1]) for o in others]) > 1.0


def test_procedural_depth_sanity() -> None:
    seen_boxes = 0
    for seed in range(12):
        s = render_scene(seed, 64, 64, far=100.0)
        sky, ground = s.labels == -1, s.labels == 0
        assert ground.any()
        if sky.any():
            assert np.all(s.depth[sky] == 100.0) and s.depth.max() == 100.0  # sky is farthest
        assert s.depth.min() > 0.0
        seen_boxes += int((s.labels > 0).any())
        # down a column, consecutive ground pixels get nearer (depth grows toward the horizon)
        rows, cols = np.nonzero(ground[:-1] & ground[1:])
        upper, lower = s.depth[rows, cols], s.depth[rows + 1, cols]
        capped = upper >= 100.0
        assert np.all(upper[~capped] > lower[~capped])
        # the exact ground distance from the camera height and ray elevation
        bottom = s.depth[-1, 32] if ground[-1, 32] else None
        if bottom is not None:
            assert bottom >= s.camera["height"] - 1e-4
    assert seen_boxes >= 8


def test_procedural_is_fast() -> None:
    generate_scene(0, 128, 128)
    t0 = time.perf_counter()
    for seed in range(5):
        generate_scene(seed, 128, 128)
    per_scene = (time.perf_counter() - t0) / 5
    assert per_scene < 0.25, per_scene  # ~0.03 s on an idle core; generous for loaded CI


def test_make_procedural_dataset_layout(tmp_path: Path) -> None:
    make_procedural_dataset(tmp_path, n_train=3, n_test=2, size=(32, 40), seed=1)
    for split, n in (("train", 3), ("test", 2)):
        pairs = find_pairs(tmp_path, split=split)
        assert pairs.layout == "dehazeformer" and len(pairs) == n
        assert len(list((tmp_path / split / "depth").glob("*.npy"))) == n
    meta = json.loads((tmp_path / "test" / "meta" / "00001.json").read_text())
    depth = np.load(tmp_path / "test" / "depth" / "00001.npy")
    gt = read_image(tmp_path / "test" / "GT" / "00001.png")
    hazy = read_image(tmp_path / "test" / "hazy" / "00001.png")
    assert depth.shape == (32, 40)
    # hazy was made from exactly this depth: re-synthesise and compare (8-bit rounding)
    again, _ = synthesize(gt, depth / meta["far"], meta["beta"], meta["airlight"])
    assert np.abs(again - hazy).max() <= 1.5 / 255
    # the same seed writes the same files
    make_procedural_dataset(tmp_path / "again", n_train=3, n_test=2, size=(32, 40), seed=1)
    assert (tmp_path / "again/test/hazy/00001.png").read_bytes() == (tmp_path / "test/hazy/00001.png").read_bytes()


# ------------------------------------------------------------------ CLI
def test_cli_procedural(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["synth", "--procedural", "5", "--out", str(tmp_path / "d"), "--size", "24", "32",
               "--test-fraction", "0.4", "--seed", "3"])
    assert rc == 0
    assert len(list((tmp_path / "d/train/hazy").glob("*.png"))) == 3
    assert len(list((tmp_path / "d/test/GT").glob("*.png"))) == 2
    assert read_image(tmp_path / "d/test/hazy/00000.png").shape == (24, 32, 3)
    assert "next:" in capsys.readouterr().out


def test_cli_clear_with_depth_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_image(tmp_path / "clear" / f"{name}.png", rng.random((10, 12, 3)).astype(np.float32))
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a.npy", np.linspace(1, 50, 120).reshape(10, 12))  # metres
    rc = main(["synth", "--clear", str(tmp_path / "clear"), "--depth", str(tmp_path / "depth"),
               "--out", str(tmp_path / "out"), "--split", "test", "--beta", "1", "1", "--skip-bad"])
    assert rc == 0
    pairs = find_pairs(tmp_path / "out")
    assert [p.name for p in pairs.pairs] == ["a"]  # b has no depth: skipped
    meta = json.loads((tmp_path / "out/test/meta/a.json").read_text())
    assert meta["beta"] == 1.0 and meta["depth_source"].endswith("a.npy")
    clear = read_image(tmp_path / "clear/a.png")
    hazy = read_image(tmp_path / "out/test/hazy/a.png")
    # depth normalised by its max (50 m): far corner t = e^-1, near corner t = e^-(1/50)
    a = meta["airlight"][0]
    for (r, c), d in (((-1, -1), 1.0), ((0, 0), 1.0 / 50)):
        t = np.exp(-d)
        np.testing.assert_allclose(hazy[r, c], clear[r, c] * t + a * (1 - t), atol=1 / 255)
    # without --skip-bad the missing depth is a one-line error, exit 2
    assert main(["synth", "--clear", str(tmp_path / "clear"), "--depth", str(tmp_path / "depth"),
                 "--out", str(tmp_path / "out2")]) == 2


def test_cli_needs_one_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--out", str(tmp_path)]) == 2
    assert "--clear DIR, --procedural N or --rgbd DIR" in capsys.readouterr().err


@pytest.mark.slow  # importing transformers alone takes ~15 s on the 2-core machine
def test_depth_teacher_source(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from edgehaze.models.dehazer import build_depth

    provider = build_depth("tiny", input_size=28)
    write_image(tmp_path / "c" / "x.png", np.random.default_rng(1).random((20, 30, 3)).astype(np.float32))
    res = make_hazy_dataset([tmp_path / "c" / "x.png"], tmp_path / "o", depth_provider=provider,
                            depth_name="tiny", progress=False)
    assert res["written"] == 1
    meta = json.loads((tmp_path / "o/train/meta/x.json").read_text())
    assert meta["depth_source"] == "depth model tiny"
    assert read_image(tmp_path / "o/train/hazy/x.png").shape == (20, 30, 3)
