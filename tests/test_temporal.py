"""Video mode: the flicker measure, map smoothing in the runtime, scene cuts and the clear-frame bypass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

import runtime  # noqa: E402
from runtime.errors import RuntimeError_, Status  # noqa: E402
from runtime.flicker import WarpingError, tof, warping_error  # noqa: E402
from runtime.temporal import HazeGate, haze_score  # noqa: E402


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured RGB image (optical flow has something to lock on)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w + 16, h + 16), interpolation=cv2.INTER_CUBIC)[8:8 + h, 8:8 + w].copy()


# -- the measure ----------------------------------------------------------------------------------
def test_warping_error_of_a_static_video_is_zero():
    f = _texture(96, 128)
    assert warping_error([f, f.copy(), f.copy()]) == 0.0


def test_warping_error_of_a_shifted_copy_is_zero_after_warping():
    big = _texture(120, 160, seed=1)
    frames = [big[10:106, 10 + k:138 + k].copy() for k in range(0, 9, 3)]  # a 3-pixel pan per frame
    raw = float(np.mean([((a.astype(np.float32) - b) / 255) ** 2 for a, b in zip(frames, frames[1:])]))
    assert raw > 1e-3  # the frames do differ
    assert warping_error(frames) < 0.02 * raw


def test_warping_error_sees_flicker_the_input_does_not_have():
    f = _texture(96, 128, seed=2)
    frames = [f] * 4
    flicker = [np.clip(f.astype(int) + (12 if k % 2 else 0), 0, 255).astype(np.uint8) for k in range(4)]
    m = WarpingError()
    for x, y in zip(frames, flicker):
        m.add(x, {"flicker": y, "same": x})
    r = m.result()
    assert r["pairs"] == 3 and r["input"] == 0.0 and r["same"] == 0.0
    assert r["flicker"] == pytest.approx((12 / 255) ** 2, rel=0.05)


def test_tof_is_zero_for_the_ground_truth_itself_and_not_for_a_still():
    big = _texture(120, 160, seed=3)
    gt = [big[10:106, 10 + k:138 + k].copy() for k in range(0, 12, 3)]
    assert tof(gt, gt) == 0.0
    assert tof([gt[0]] * len(gt), gt) > 0.5


# -- the runtime ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """edge-xs (guided apply, as the shipped models) + a CNN student in the fused layout, two-graph export."""
    from edgehaze import build_dehazer
    from edgehaze.checkpoint import save_dehazer
    from edgehaze.export import export_checkpoint

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("temporal")
    model = build_dehazer("edge-xs", depth="student-s", fusion="lite", backbone_kwargs={"apply": "guided"},
                          depth_kwargs={"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1]})
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    save_dehazer(tmp / "s.safetensors", model.eval())
    res = export_checkpoint(tmp / "s.safetensors", out=tmp / "export", two_graph=True, log=lambda _m: None,
                            progress=False)
    return Path(res.files["onnx"])


def _hazy(h: int, w: int, seed: int) -> np.ndarray:
    return (0.5 * _texture(h, w, seed) + 100).astype(np.uint8)


def test_smoothing_off_is_todays_output_and_a_first_frame_is_exact(artifact):
    frames = [_hazy(60, 84, s) for s in range(3)]
    with runtime.Dehazer(artifact) as plain, runtime.Dehazer(artifact, {"temporal": 0.0}) as off, \
            runtime.Dehazer(artifact, {"temporal": 0.8}) as on:
        for k, f in enumerate(frames):
            a, b = plain.run(f), off.run(f)
            assert np.array_equal(a, b)
            if k == 0:  # a first frame has no past: the smoothing graph gives the plain graph's bytes
                assert np.array_equal(on.run(f), a)


def test_smoothing_holds_the_maps_on_a_noisy_still(artifact):
    rng = np.random.default_rng(0)
    base = _hazy(64, 80, 7).astype(int)
    frames = [np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(8)]
    outs = {}
    for strength in (0.0, 0.9):
        with runtime.Dehazer(artifact, {"temporal": strength} if strength else None) as d:
            ys = [d.run(f).astype(int) - f for f in frames]  # the correction the model adds
        outs[strength] = np.mean([np.abs(a - b).mean() for a, b in zip(ys, ys[1:])])
    assert outs[0.9] < outs[0.0]


def test_a_scene_cut_resets_the_state_and_refreshes_held_depth(artifact):
    a, b = _hazy(64, 80, 11), (0.3 * _texture(64, 80, 12)).astype(np.uint8)  # a bright scene, then a dark one
    with runtime.Dehazer(artifact, {"depth_every": 100}) as ref:
        ref.run(a)
        ref.refresh_depth_next()
        expect_b = ref.run(b)  # b dehazed with its own depth and no past
    with runtime.Dehazer(artifact, {"temporal": 0.9, "depth_every": 100}) as d:
        for _ in range(3):
            d.run(a)
        assert d.depth_refreshes == 1 and d.scene_cuts == 0
        got = d.run(b)
        assert d.scene_cuts == 1 and d.depth_refreshes == 2
        assert np.array_equal(got, expect_b)
        d.run(np.ascontiguousarray(b[:48, :64]))  # a new size also starts over
        assert d._temporal.resets == 3 and d.scene_cuts == 1


def test_bad_temporal_strength_is_a_bad_argument(artifact):
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(RuntimeError_) as e:
            runtime.Dehazer(artifact, {"temporal": bad})
        assert e.value.code == Status.BAD_ARGUMENT


# -- the bypass -----------------------------------------------------------------------------------
def _clear() -> np.ndarray:
    f = _texture(96, 128, seed=5)
    f[..., 2] = f[..., 2] // 8  # one dark channel everywhere: a clear, saturated scene
    return f


def test_bypass_returns_a_clear_frame_unchanged_and_dehazes_a_hazy_one(artifact):
    clear, hazy = _clear(), _hazy(96, 128, 6)
    assert haze_score(clear) < 0.1 < 0.3 < haze_score(hazy)
    with runtime.Dehazer(artifact, {"bypass": True}) as d, runtime.Dehazer(artifact) as plain:
        assert np.array_equal(d.run(clear), clear)
        assert d._gate.bypassed == 1
        d2 = runtime.Dehazer(artifact, {"bypass": True})
        assert np.array_equal(d2.run(hazy), plain.run(hazy))
        d2.close()


def _haze(j: np.ndarray, t: float, airlight: float = 230.0) -> np.ndarray:
    return np.clip(j.astype(np.float32) * t + airlight * (1 - t), 0, 255).astype(np.uint8)


def test_bypass_does_not_toggle_on_a_noisy_borderline_sequence():
    rng = np.random.default_rng(1)
    g = HazeGate()
    mid = 0.5 * (g.clear_below + g.hazy_above)
    j = _clear()
    ts = np.linspace(0.5, 1.0, 101)
    t0 = ts[int(np.argmin([abs(haze_score(_haze(j, t)) - mid) for t in ts]))]
    assert abs(haze_score(_haze(j, t0)) - mid) < 0.01
    scores = []
    for _ in range(80):  # haze level and pixels both noisy, straddling the band's midpoint
        f = _haze(j, t0 + rng.normal(0, 0.02)).astype(int) + rng.integers(-4, 5, j.shape)
        g(np.clip(f, 0, 255).astype(np.uint8))
        scores.append(g.score)
    assert min(scores) < mid < max(scores)
    assert g.toggles == 0
    # a real change does flip it (after the hold)
    start = g.clear
    for _ in range(g.hold):
        g(_haze(j, 0.98) if not start else _haze(j, 0.5))
    assert g.toggles == 1 and g.clear != start


# -- the stream tool ------------------------------------------------------------------------------
def test_stream_reports_video_counters_and_flicker(artifact, tmp_path):
    import json

    from runtime.sources import natural_key
    from runtime.stream import main

    frames = tmp_path / "frames"
    frames.mkdir()
    big = _hazy(80, 120, 13)
    for k in (0, 1, 2, 10, 11):  # unpadded numbers: natural order is 0 1 2 10 11
        cv2.imwrite(str(frames / f"f_{k}.png"), np.ascontiguousarray(big[:64, k:k + 80]))
    assert [p.name for p in sorted(frames.iterdir(), key=natural_key)] == [f"f_{k}.png" for k in (0, 1, 2, 10, 11)]
    stats = tmp_path / "s.json"
    assert main(["--model", str(artifact), "--input", str(frames), "--output", "null", "--headless",
                 "--temporal", "0.6", "--bypass", "--flicker-stats", "--stats-json", str(stats),
                 "--stats-interval", "0"]) == 0
    s = json.loads(stats.read_text())
    assert s["frames"] == 5 and s["temporal"] == 0.6 and s["bypass"] is True
    assert s["bypassed"] == 0 and s["bypass_toggles"] == 0 and s["bypass_state"] == "hazy"  # hazy frames
    assert s["flicker"]["pairs"] == 4 and s["flicker"]["input"] > 0 and s["flicker"]["ratio"]["output"] > 0
    assert s["stages_ms"]["flicker"]["count"] == 5
    assert main(["--model", str(artifact), "--input", str(frames), "--output", "null", "--headless",
                 "--temporal", "1.5"]) == 2


def test_stream_smooths_by_default_and_zero_gives_per_frame_bytes(artifact, tmp_path):
    """A video tool's default: smoothing where the graph allows it; --temporal 0 is today's per-frame output."""
    import json

    from runtime.stream import main
    from runtime.temporal import DEFAULT_STRENGTH

    frames = tmp_path / "frames"
    frames.mkdir()
    big = _hazy(80, 120, 15)
    clip = [np.ascontiguousarray(big[:64, 2 * k:2 * k + 80]) for k in range(5)]
    for k, f in enumerate(clip):
        cv2.imwrite(str(frames / f"f_{k}.png"), f[..., ::-1])

    def stream(*extra: str) -> tuple:
        out, stats = tmp_path / f"out{len(extra)}", tmp_path / f"s{len(extra)}.json"
        assert main(["--model", str(artifact), "--input", str(frames), "--output", str(out) + "/", "--headless",
                     "--stats-json", str(stats), "--stats-interval", "0", *extra]) == 0
        got = [cv2.imread(str(q))[..., ::-1] for q in sorted(out.iterdir())]
        return got, json.loads(stats.read_text())["temporal"]

    def expected(strength: float) -> list:
        with runtime.Dehazer(artifact, {"temporal": strength}) as d:
            return [d.run(f) for f in clip]

    default, t_default = stream()
    off, t_off = stream("--temporal", "0")
    assert t_default == DEFAULT_STRENGTH and t_off == 0.0
    smooth, plain = expected(DEFAULT_STRENGTH), expected(0.0)
    assert all(np.array_equal(a, b) for a, b in zip(default, smooth))
    assert all(np.array_equal(a, b) for a, b in zip(off, plain))
    assert not all(np.array_equal(a, b) for a, b in zip(smooth, plain))  # the default does smooth


def test_the_stream_default_leaves_gpu_backends_per_frame(artifact, capsys):
    """Unmeasured on a GPU (a second session, a second TensorRT build): the default smooths on the CPU only."""
    from runtime.stream import default_smoothing

    with runtime.Dehazer(artifact) as d:
        d.device = "cuda"  # what a CUDA / TensorRT backend reports
        default_smoothing(d)
        assert d.options.temporal == 0.0 and d._temporal is None
        d.device = "cpu"
        default_smoothing(d)
        assert d.options.temporal > 0 and d._temporal is not None
    assert "video smoothing off on" in capsys.readouterr().err


def test_set_temporal_is_refused_without_correction_maps_and_leaves_the_handle(tmp_path):
    """A graph with no correction maps cannot smooth: UNSUPPORTED, and the handle still runs per frame."""
    try:
        from _artifacts import make_artifact
    except ImportError:  # tests/ imported as a package
        from tests._artifacts import make_artifact

    path = make_artifact(tmp_path, two_graph=False)  # a contract-following toy graph, not an edge-* fused one
    frame = _hazy(32, 40, 16)
    with runtime.Dehazer(path) as d:
        with pytest.raises(RuntimeError_) as e:
            d.set_temporal(0.7)
        assert e.value.code == Status.UNSUPPORTED and d.options.temporal == 0.0
        with runtime.Dehazer(path) as ref:
            assert np.array_equal(d.run(frame), ref.run(frame))
        with pytest.raises(RuntimeError_) as e:
            d.set_temporal(1.0)
        assert e.value.code == Status.BAD_ARGUMENT


def test_benchmark_reports_ratios_and_tof_for_any_artifact(artifact, tmp_path):
    import json

    from benchmarks.temporal import main

    clip, gt = tmp_path / "clip", tmp_path / "gt"
    clip.mkdir(), gt.mkdir()
    big = _texture(80, 120, 14)
    for k in range(4):
        view = np.ascontiguousarray(big[:64, 2 * k:2 * k + 80])
        cv2.imwrite(str(gt / f"{k}.png"), view)
        cv2.imwrite(str(clip / f"{k}.png"), (0.5 * view + 100).astype(np.uint8))
    out = tmp_path / "report"
    assert main(["--model", str(artifact), "--fog", str(tmp_path / "none"), "--photos", str(tmp_path / "none"),
                 "--clip", str(clip), "--clip-gt", str(gt), "--no-cost", "--clear-photos", str(tmp_path / "none"),
                 "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())["clips"]["clip clip"]
    assert r["pairs"] == 3 and set(r["ratio"]) == {"per_frame", "smoothed", "smoothed_bypass", "dcp", "held_maps"}
    assert all(v >= 0 for v in r["tof"].values())
    assert "| clip clip | 3 |" in (out / "report.md").read_text()


def test_held_maps_on_a_still_clip_reproduce_the_graphs_own_output(artifact):
    """The floor column re-applies the graph's maps in numpy: on a still clip (mean maps = each frame's) it is the output."""
    from benchmarks.temporal import dehaze, held_maps

    frame = np.ascontiguousarray(_texture(60, 90, 21))  # sides not multiples of the scale: partial cells
    held = held_maps(str(artifact), [frame, frame])
    (out, _, _) = dehaze(str(artifact), [frame], {})
    assert held is not None and np.abs(held[0].astype(int) - out[0]).max() <= 1


def test_flicker_on_validation_pans_groups_scenes_and_compares_with_the_floor(artifact, tmp_path):
    from benchmarks.flicker_val import measure, scene_heads, source_haze, val_psnr

    (tmp_path / "hazy").mkdir(), (tmp_path / "GT").mkdir()
    for name, seed in (("1410_0", 1), ("1410_orig1", 2), ("frida2-000008_K080", 3), ("frida2-000008_0", 4)):
        cv2.imwrite(str(tmp_path / "hazy" / f"{name}.png"), _hazy(120, 160, seed))
        cv2.imwrite(str(tmp_path / "GT" / f"{name}.png"), _texture(120, 160, seed))
    heads = scene_heads(tmp_path / "hazy")
    assert [p.stem for p in heads] == ["1410_0", "frida2-000008_0"]
    assert [source_haze(p) for p in sorted((tmp_path / "hazy").iterdir())] == [False, True, False, True]
    r = measure(artifact, heads, (48, 64), frames=4, step=3)
    assert r["clips"] == 2 and r["per_frame_over_floor"] > 0 and r["warping_error"] > 0
    v = val_psnr(artifact, tmp_path)
    assert set(v) == {"val_psnr_rendered", "val_psnr_source_haze"} and all(5 < x < 60 for x in v.values())


def test_flicker_val_scores_an_artifact_at_the_frame_height_it_serves(artifact, tmp_path, capsys):
    """An .onnx argument is measured as it is; --frame-height resizes both images of each pair first."""
    import json

    from benchmarks.flicker_val import main, to_height, val_psnr

    val = tmp_path / "val"
    (val / "hazy").mkdir(parents=True), (val / "GT").mkdir()
    for name, seed in (("1410_0", 5), ("1410_orig1", 6)):
        cv2.imwrite(str(val / "hazy" / f"{name}.png"), _hazy(60, 80, seed))
        cv2.imwrite(str(val / "GT" / f"{name}.png"), _texture(60, 80, seed))
    assert to_height(_texture(60, 80, 1), 90).shape == (90, 120, 3)
    assert val_psnr(artifact, val, 90) != val_psnr(artifact, val)  # a different size, a different score
    art = tmp_path / "a.onnx"
    art.write_bytes(Path(artifact).read_bytes())
    (tmp_path / "a.json").write_text(Path(artifact).with_suffix(".json").read_text())
    assert main(["--val", str(val), "--frame-height", "90", "--size", "48", "64", "--frames", "3", str(art)]) == 0
    r = json.loads((tmp_path / "a.flicker_val.json").read_text())
    assert r["frame_height"] == 90 and r["per_frame_over_floor"] > 0 and "psnr" not in r
    with pytest.raises(SystemExit, match="no such artifact"):
        main(["--val", str(val), str(tmp_path / "missing.onnx")])


def test_flicker_val_on_a_run_directory_can_run_again(artifact, tmp_path):
    """Its report must not overwrite the exported artifact's sidecar (RUN/flicker_val.json), or a rerun fails."""
    import json
    import shutil

    from benchmarks.flicker_val import main

    run = tmp_path / "run"
    (run / "rgb").mkdir(parents=True)
    shutil.copy(Path(artifact).parents[1] / "s.safetensors", run / "rgb" / "last.safetensors")
    val = tmp_path / "val"
    (val / "hazy").mkdir(parents=True), (val / "GT").mkdir()
    cv2.imwrite(str(val / "hazy" / "1410_0.png"), _hazy(60, 80, 7))
    cv2.imwrite(str(val / "GT" / "1410_0.png"), _texture(60, 80, 7))
    for _ in range(2):
        assert main(["--val", str(val), "--size", "48", "64", "--frames", "3", str(run)]) == 0
    assert json.loads((run / "flicker_val.json").read_text())["format"] == "edgehaze-artifact"
    assert json.loads((run / "flicker_val_report.json").read_text())["per_frame_over_floor"] > 0
