"""The edge-aware (guided) apply step: exactness where maps are smooth, the fused graph equals torch, edges followed."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_refit_of_constant_maps_is_exact():
    """Where K and B do not change over a window, the refit returns them (the ridge prior is the network's gain)."""
    from edgehaze.models.backbones.edge import guided_refit

    guide = torch.rand(1, 3, 9, 11)
    maps = torch.cat([torch.full((1, 3, 9, 11), 0.7), torch.full((1, 3, 9, 11), -0.2)], dim=1)
    out = guided_refit(guide, maps, 1, torch.full((3,), 1e-3))
    assert torch.allclose(out, maps, atol=1e-5)


def _const_core(maps: np.ndarray, scale: int, prepool: int, guide=None):
    """A "core" that ignores its input and returns ``maps``, carrying the fused-graph metadata."""
    try:
        from _artifacts import const_core
    except ImportError:  # run from the repository root as a package
        from tests._artifacts import const_core
    return const_core(maps, scale, prepool, guide)


@pytest.mark.parametrize("scale,prepool,hw", [(4, 4, (19, 27)), (3, 3, (15, 21)), (4, 1, (18, 26)), (4, 4, (20, 28))])
def test_fused_guided_apply_equals_torch_reference(scale, prepool, hw):
    """Odd sizes, odd scale, a core on the whole frame, RGB and BGR frames: within one level of torch."""
    from edgehaze.export.fused import fused_graph, reference_apply

    rng = np.random.default_rng(scale + prepool)
    h, w = -(-hw[0] // scale), -(-hw[1] // scale)
    maps = (rng.standard_normal((1, 6, h, w)) * 0.3).astype(np.float32)
    guide = {"radius": 1, "eps": [1e-3, 2e-3, 5e-4]}
    for order in ("RGB", "BGR"):
        sess = _session(fused_graph(_const_core(maps, scale, prepool, guide), order))
        img = rng.integers(0, 256, size=(1, *hw, 3), dtype=np.uint8)
        got = sess.run(["dehazed"], {"image": img})[0]
        rgb = np.ascontiguousarray(img[..., ::-1]) if order == "BGR" else img
        want = reference_apply(rgb, maps, scale, guide)
        if order == "BGR":
            want = want[..., ::-1]
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (order, diff.max())
        plain = reference_apply(rgb, maps, scale)
        assert np.abs(plain.astype(np.int16) - want.astype(np.int16)).max() > 2  # the refit changed something


def test_guided_model_exports_to_the_fused_graph():
    """A whole edge model with apply='guided': fused ONNX (uint8 in/out) == the torch model, odd size."""
    from edgehaze.export.fused import export_fused, guide_meta
    from edgehaze.export.graphs import FloatModel, FullGraph
    from edgehaze.models.dehazer import build_dehazer

    torch.manual_seed(0)
    model = build_dehazer(backbone="edge-xs", backbone_kwargs={"apply": "guided", "scale": 4}).eval()
    torch.nn.init.normal_(model.backbone.head.weight, std=0.05)
    fused = export_fused(model)
    assert guide_meta(fused) is not None or any(n.name.startswith("fused/guide") for n in fused.graph.node)
    img = np.random.default_rng(1).integers(0, 256, size=(1, 37, 53, 3), dtype=np.uint8)
    got = _session(fused).run(["dehazed"], {"image": img})[0]
    with torch.no_grad():
        want = FullGraph(FloatModel(model)).eval()(torch.from_numpy(img)).numpy()
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.abs(got.astype(np.int16) - img.astype(np.int16)).max() > 3


def test_guided_apply_follows_a_depth_edge():
    """Maps pooled at 1/8 across a near/far edge: the refit leaves a smaller halo than bilinear upsampling."""
    from edgehaze.metrics.halo import halo_measure
    from edgehaze.models.backbones.edge import apply_correction, guided_refit, pool_frame

    h, w, s = 64, 96, 8
    rng = np.random.default_rng(0)
    clear = np.empty((h, w, 3), np.float32)
    clear[:, :45] = [0.15, 0.35, 0.2]       # near object (edge not on a cell border)
    clear[:, 45:] = [0.55, 0.5, 0.45]       # far wall
    clear += rng.normal(0, 0.01, clear.shape).astype(np.float32)
    t = np.where(np.arange(w)[None, :] < 45, 0.9, 0.35)[..., None].astype(np.float32)
    hazy = clear * t + 0.9 * (1 - t)
    # the exact per-pixel correction J = (1 + K) I + B, then what a 1/8 network can hold: its cell means
    k = 1.0 / t - 1.0
    bb = np.broadcast_to(-0.9 * (1.0 / t - 1.0), clear.shape)
    exact = np.concatenate([np.broadcast_to(k, clear.shape), bb], axis=2)
    x = torch.from_numpy(hazy).permute(2, 0, 1)[None]
    maps = pool_frame(torch.from_numpy(np.ascontiguousarray(exact)).permute(2, 0, 1)[None], s)
    plain = apply_correction(x, maps, s)[0].permute(1, 2, 0).numpy()
    refit = apply_correction(x, guided_refit(pool_frame(x, s), maps, 1, torch.full((3,), 1e-4)), s)[0].permute(1, 2, 0).numpy()
    h_plain, h_refit = halo_measure(plain, clear)["halo"], halo_measure(refit, clear)["halo"]
    assert h_refit < 0.6 * h_plain, (h_refit, h_plain)


def test_bilinear_models_are_unchanged():
    """apply='bilinear' (the default) has no refit parameter and applies the maps as predicted."""
    from edgehaze.models.backbones.edge import apply_correction
    from edgehaze.models.dehazer import build_dehazer

    model = build_dehazer(backbone="edge-xs").eval()
    assert not any("guide" in k for k in model.state_dict())
    x = torch.rand(1, 3, 17, 23)
    maps = model.backbone.correction_maps(x)
    assert torch.equal(model.backbone.apply_maps(x, maps), apply_correction(x, maps, model.backbone.scale))
