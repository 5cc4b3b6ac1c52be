"""The edge backbone's global context and physics head: start as the plain network / identity, invert the
scattering model exactly, export to the fused ONNX graph like any edge model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgehaze.models.registries import BACKBONES


def _edge(**kw):
    import edgehaze.models.backbones  # noqa: F401 (registers the backbones)

    return BACKBONES.build("edge-xs", scale=4, **kw).eval()


def test_context_starts_as_the_plain_network():
    torch.manual_seed(0)
    plain = _edge()
    torch.nn.init.normal_(plain.head.weight, std=0.05)
    ctx = _edge(context=True)
    missing = ctx.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("context.") for k in missing)
    x = torch.rand(2, 3, 23, 31)
    with torch.no_grad():
        assert torch.equal(plain(x), ctx(x))
        torch.nn.init.normal_(ctx.context.expand.weight, std=0.5)
        assert not torch.allclose(plain(x), ctx(x))  # once trained it does change the maps


def test_physics_head_inverts_the_scattering_model():
    """J = (1 + K) I + B with the head's maps equals (I - A) / t + A for its own t and A."""
    torch.manual_seed(0)
    model = _edge(head="physics")
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert (model(x) - x).abs().max() < 1e-6  # starts as the identity
        torch.nn.init.normal_(model.head.transmission.weight, std=0.3)
        torch.nn.init.normal_(model.head.airlight.weight, std=0.3)
        maps = model.correction_maps(x)
        k, b = maps[:, :3], maps[:, 3:]
        assert torch.equal(k[:, 0], k[:, 1]) and torch.equal(k[:, 0], k[:, 2])  # one transmission
        inv_t = 1.0 + k[:, :1]
        sure = k[0, 0].abs() > 1e-2
        assert sure.sum() > 10
        a = (-b / k)[0][:, sure]  # 3 x cells
        assert torch.allclose(a, a[:, :1].expand_as(a), atol=1e-4)  # one global airlight per channel
        airlight = a[:, 0].view(1, 3, 1, 1)
        small = torch.rand_like(k)
        j = (1.0 + k) * small + b
        assert torch.allclose(j, (small - airlight) * inv_t + airlight, atol=1e-5)
    with pytest.raises(ValueError, match="head must be"):
        _edge(head="bogus")


@pytest.mark.parametrize("kw", [{"context": True}, {"head": "physics", "context": True}])
def test_context_and_physics_models_export_to_the_fused_graph(kw):
    import onnxruntime as ort

    from edgehaze.export.fused import export_fused
    from edgehaze.export.graphs import FloatModel, FullGraph
    from edgehaze.models.dehazer import build_dehazer

    torch.manual_seed(0)
    model = build_dehazer(backbone="edge-xs", backbone_kwargs={"apply": "guided", "scale": 4, **kw}).eval()
    with torch.no_grad():
        for p in model.backbone.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if model.backbone.context is not None:
            torch.nn.init.normal_(model.backbone.context.expand.weight, std=0.1)
        if kw.get("head") == "physics":
            model.backbone.head.transmission.bias.fill_(1.0)  # a visible haze correction
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(export_fused(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    img = np.random.default_rng(1).integers(0, 256, size=(1, 37, 53, 3), dtype=np.uint8)
    got = sess.run(["dehazed"], {"image": img})[0]
    with torch.no_grad():
        want = FullGraph(FloatModel(model)).eval()(torch.from_numpy(img)).numpy()
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.abs(got.astype(np.int16) - img.astype(np.int16)).max() > 3


def test_ort_ptq_keeps_the_global_context_float():
    """ORT PTQ leaves the context's 1x1 convs float (as NNCF's FLOAT_SCOPE does) and quantises the rest."""
    from edgehaze.export.fused import export_core, quantize_core
    from edgehaze.export.quantize import float_nodes
    from edgehaze.models.dehazer import build_dehazer

    torch.manual_seed(0)
    model = build_dehazer(backbone="edge-xs", backbone_kwargs={"apply": "guided", "scale": 4, "context": True}).eval()
    core = export_core(model)
    ctx = set(float_nodes(core))
    assert ctx and any(n.op_type == "Conv" for n in core.graph.node if n.name in ctx)
    calib = [np.random.default_rng(i).random((32, 48, 3)).astype(np.float32) for i in range(2)]
    q = quantize_core(core, calib)
    dq_outputs = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    quantised = {n.name for n in convs if n.input[1] in dq_outputs}
    assert quantised and not quantised & ctx
    assert any(n.name in ctx for n in convs)
