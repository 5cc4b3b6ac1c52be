"""INT8: calibration data, quantisation-aware training (NNCF), ORT static PTQ, accuracy.

``--method qat`` (default): NNCF inserts fake-quantisers into the float core
(:class:`~edgehaze.export.graphs.FloatCore`: the low-resolution network and
the depth branch; BatchNorm folded first), calibrates them on the
calibration images, then fine-tunes ``N`` steps so the INT8 model matches the
FP32 model's output (distillation, L1) and, when the data has ground truth,
the GT too. ``nncf.strip(..., NATIVE)`` turns the fake-quantisers into torch
quantize/dequantize ops that trace to ONNX QDQ nodes.

``--method ptq``: ONNX Runtime's ``quantize_static`` (QDQ, per-channel,
activation ranges at a percentile, :data:`CALIB_PERCENTILE`) on the FP32 ONNX graph, restricted to the core's nodes. Fast, no
training; usually a larger accuracy drop.

Both methods write the flavour ``--target`` asks for
(:data:`edgehaze.export.targets.FLAVOURS`): asymmetric uint8 activations for
ONNX Runtime on CPU, symmetric int8 (zero-point 0) for TensorRT.

Accuracy is measured on hold-out images never used for calibration or
fine-tuning: PSNR/SSIM of FP32 and INT8 against GT (when the data has it)
and of INT8 against FP32.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.errors import EdgehazeError

Sample = Tuple[np.ndarray, Optional[np.ndarray]]  # (hazy01, gt01 or None), H x W x 3 float32
DEFAULT_CALIB_SIZE = (240, 320)


@dataclass
class CalibrationSet:
    calib: List[Sample]
    holdout: List[Sample]
    source: str
    has_gt: bool = field(default=False)


def _resize(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32)
    interp = cv2.INTER_AREA if img.shape[0] >= h else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp).astype(np.float32)


def procedural_samples(n: int, size: Tuple[int, int], seed: int = 1234) -> List[Sample]:
    """``n`` procedural hazy/clear pairs rendered in memory (edgehaze.data.procedural)."""
    from edgehaze.data.procedural import DEFAULT_FAR, PROCEDURAL_BETA, generate_scene
    from edgehaze.data.synthesis import sample_params, synthesize

    out: List[Sample] = []
    for i in range(n):
        rgb, depth = generate_scene(seed + i, size[0], size[1], far=DEFAULT_FAR)
        beta, air = sample_params(seed + i, 0, beta=PROCEDURAL_BETA)
        hazy, _ = synthesize(rgb, depth / DEFAULT_FAR, beta, air)
        out.append((hazy.astype(np.float32), rgb.astype(np.float32)))
    return out


def load_calibration(
    spec: Optional[str], n_calib: int, n_holdout: int, size: Tuple[int, int] = DEFAULT_CALIB_SIZE, seed: int = 0
) -> CalibrationSet:
    """Calibration and hold-out images from ``--calib``.

    ``spec``: a dataset folder in any layout ``edgehaze.data`` detects (pairs
    give GT, so the PSNR drop is measured against GT), a folder of images
    (no GT: the drop is INT8 vs FP32 only), or ``procedural`` (rendered
    scenes; a warning says real frames calibrate better). The images are
    shuffled with ``seed`` and split: the first ``n_calib`` calibrate, the
    next ``n_holdout`` measure accuracy. All are resized to ``size``.
    """
    if n_calib < 1 or n_holdout < 1:
        raise EdgehazeError("--calib-images and --holdout-images must both be >= 1")
    if spec is None:
        raise EdgehazeError(
            "--int8 needs calibration images: pass --calib DATA (a dataset folder or a folder of images "
            "from the deployment camera), or --calib procedural to use rendered scenes"
        )
    if spec == "procedural":
        warnings.warn("calibrating on procedural scenes; real frames from the target camera calibrate better "
                      "(--calib DIR)", stacklevel=2)
        samples = procedural_samples(n_calib + n_holdout, size)
        return CalibrationSet(samples[:n_calib], samples[n_calib:], "procedural", has_gt=True)
    from edgehaze.data.layouts import find_pairs
    from edgehaze.imageio import read_image

    root = Path(spec)
    if not root.exists():
        raise EdgehazeError(f"--calib {root}: no such folder")
    pairs = list(find_pairs(root).pairs)
    if len(pairs) < 2:
        raise EdgehazeError(f"--calib {root}: found {len(pairs)} image(s); need at least 2 (calibration + hold-out)")
    order = np.random.default_rng(seed).permutation(len(pairs))
    holdout_n = min(n_holdout, max(1, len(pairs) // 4))
    calib_n = min(n_calib, len(pairs) - holdout_n)
    chosen = [pairs[i] for i in order[: calib_n + holdout_n]]
    samples: List[Sample] = []
    for p in chosen:
        gt = _resize(read_image(p.gt), size) if p.gt is not None else None
        samples.append((_resize(read_image(p.hazy), size), gt))
    has_gt = all(s[1] is not None for s in samples)
    if not has_gt:
        samples = [(h, None) for h, _ in samples]
    return CalibrationSet(samples[:calib_n], samples[calib_n:], str(root), has_gt=has_gt)


def to_uint8(img01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img01 * 255.0), 0, 255).astype(np.uint8)


def _as_batch(samples: Sequence[Sample]) -> "Tuple[torch.Tensor, Optional[torch.Tensor]]":  # noqa: F821
    import torch

    # the graph sees uint8 input: calibrate on the same 8-bit values
    x = torch.stack([torch.from_numpy(to_uint8(h).astype(np.float32) / 255.0).permute(2, 0, 1) for h, _ in samples])
    if any(g is None for _, g in samples):
        return x, None
    return x, torch.stack([torch.from_numpy(g).permute(2, 0, 1) for _, g in samples])


def _nncf() -> Any:
    # NNCF compiles a C++ extension on first use; on a 2-core machine that
    # takes longer than NNCF's default 60 s timeout.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    import nncf

    return nncf


#: activation ranges of PTQ: this percentile of the calibration activations' magnitudes, not their min/max.
#: MinMax ranges follow the most extreme activation seen in calibration; clipping the top 0.01% gives
#: every other value finer steps. Chosen on validation only: the shipped student's INT8 on the 131 validation pairs of
#: runs/demo-full/data/val scored 24.43 / 19.86 dB (rendered / source haze) with MinMax, 24.86 / 19.95 at
#: 99.999 and 24.94 / 19.95 at 99.99, against FP32's 24.97 / 19.94 (export hold-out drop 0.19 -> 0.02).
CALIB_PERCENTILE = 99.99


def ort_static_options(target: str = "cpu") -> Dict[str, Any]:
    """``quantize_static`` keywords of a flavour (:data:`edgehaze.export.targets.FLAVOURS`).

    cpu: uint8 asymmetric activations (what ORT's CPU kernels fuse into
    QLinearConv), int32 biases; trt: int8 symmetric activations (zero-point
    0, what TensorRT takes), float biases. Both: QDQ, int8 symmetric weights
    per channel, activation ranges at the :data:`CALIB_PERCENTILE` percentile.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    from edgehaze.export.targets import FLAVOURS

    fl = FLAVOURS[target]
    return dict(quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                activation_type=QuantType.QInt8 if fl.activations == "int8" else QuantType.QUInt8,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"ActivationSymmetric": fl.symmetric, "WeightSymmetric": True,
                               "QuantizeBias": fl.int32_bias, "CalibPercentile": CALIB_PERCENTILE})


#: node names of what stays float in every INT8 export: the edge backbone's global context
FLOAT_NODE_PATTERN = r".*\bcontext[./].*"


def FLOAT_SCOPE(nncf: Any) -> Any:  # noqa: N802 (a constant of NNCF's type)
    """What stays float in NNCF's INT8: the edge backbone's global context (a 1x1-pixel path).

    Its mean over the frame and two 1x1 convs on one pixel cost nothing in
    float, and quantising the frame-level summary moved the whole map
    (0.24 vs 0.10 dB hold-out drop with and without it).
    """
    return nncf.IgnoredScope(patterns=[FLOAT_NODE_PATTERN], validate=False)


def float_nodes(model: "onnx.ModelProto") -> List[str]:  # noqa: F821
    """ONNX Runtime PTQ's ``nodes_to_exclude``: the nodes :data:`FLOAT_NODE_PATTERN` keeps float.

    The same path as :func:`FLOAT_SCOPE` for NNCF: with the context's two
    1x1 convs quantised by PTQ, one frame-level vector moved every map and a
    1280x960 outdoor photo lost 1.0 dB against FP32 (SOTS-indoor: 0.02 dB).
    """
    import re

    pattern = re.compile(FLOAT_NODE_PATTERN)
    return [n.name for n in model.graph.node if pattern.match(n.name)]


def _nncf_quantize(nncf: Any, core: "torch.nn.Module", items: list, target: str) -> "torch.nn.Module":  # noqa: F821
    """``nncf.quantize`` with the flavour's preset; trt: every activation quantiser made signed int8.

    cpu, MIXED: asymmetric (uint8) activations. NNCF's symmetric preset gives
    tensors that can be negative int8 activations next to uint8 post-ReLU
    ones; ONNX Runtime then fuses no conv whose input and output types differ
    and runs ~20 of them as float Conv (10.4 vs 8.3 ms at 640x480).
    trt, PERFORMANCE: symmetric weights and activations. NNCF still makes a
    symmetric quantiser of a non-negative tensor unsigned (0..255, exported
    as uint8 with zero-point 0), and its hardware configs refuse a forced
    signedness for activations, so the quantisers are switched to signed
    here, before fine-tuning: TensorRT's INT8 activations are int8 only.
    """
    from edgehaze.export.targets import FLAVOURS

    fl = FLAVOURS[target]
    preset = getattr(nncf.QuantizationPreset, fl.nncf_preset)
    qcore = nncf.quantize(core, nncf.Dataset(items), subset_size=len(items), preset=preset,
                          ignored_scope=FLOAT_SCOPE(nncf))
    if fl.symmetric:
        from nncf.torch.quantization.layers import AsymmetricQuantizer, SymmetricQuantizer

        for q in qcore.modules():
            if isinstance(q, AsymmetricQuantizer):
                raise EdgehazeError("NNCF made an asymmetric quantiser under the PERFORMANCE preset; this is a bug, "
                                    "please report it (--method ptq makes the TensorRT flavour without NNCF)")
            if isinstance(q, SymmetricQuantizer) and not q.signed:
                q.signed = True
    return qcore


def qat_quantize(
    model: "torch.nn.Module",  # noqa: F821
    calib: Sequence[Sample],
    steps: int = 300,
    lr: float = 1e-4,
    batch: int = 4,
    gt_weight: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    prepool: int = 1,
    target: str = "cpu",
) -> "torch.nn.Module":  # noqa: F821
    """A :class:`FloatModel` whose core carries INT8 quantize/dequantize ops.

    ``model`` (a DepthGuidedDehazer) is not modified. ``prepool``: the core
    takes the frame already pooled by this factor (the fused export's
    layout, :func:`edgehaze.export.fused.prepooled`); the returned
    FloatModel pools before calling it. ``target``: the flavour
    (:func:`_nncf_quantize`).
    """
    import torch
    import torch.nn.functional as F

    from edgehaze.export.fused import prepooled
    from edgehaze.export.graphs import FloatCore, FloatModel, fold_batchnorm

    nncf = _nncf()
    ref = FloatModel(model).eval()
    qmodel = fold_batchnorm(copy.deepcopy(model).eval())
    core = FloatCore(prepooled(qmodel, prepool)).eval()
    images, gts = _as_batch(calib)
    pooled = images if prepool == 1 else F.avg_pool2d(images, prepool, prepool, ceil_mode=True, count_include_pad=False)
    items = [pooled[i : i + 1] for i in range(len(images))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qcore = _nncf_quantize(nncf, core, items, target)
    qfloat = FloatModel(qmodel, core=qcore, prepool=prepool)
    if steps > 0:
        with torch.no_grad():
            targets = torch.cat([ref(images[i : i + batch]) for i in range(0, len(images), batch)])
        params = [p for p in qcore.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        gen = torch.Generator().manual_seed(seed)
        qcore.train()
        if model.depth is not None and not model.depth.trainable:
            qcore.model.depth.train(False)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc="QAT fine-tune", unit="step", leave=False)
        for _ in range(steps):
            idx = torch.randint(0, len(images), (min(batch, len(images)),), generator=gen)
            out = qfloat(images[idx])
            loss = (out - targets[idx]).abs().mean()
            if gts is not None and gt_weight > 0:
                loss = loss + gt_weight * (out - gts[idx]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
        if bar is not None:
            bar.close()
    qcore.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stripped = nncf.strip(qcore, strip_format=nncf.StripFormat.NATIVE, example_input=items[0])
    return FloatModel(qmodel, core=stripped, prepool=prepool).eval()


def ptq_onnx(fp32: "onnx.ModelProto", calib: Sequence[Sample], core_prefix: str = "/float_model/core/",  # noqa: F821
             target: str = "cpu") -> "onnx.ModelProto":  # noqa: F821
    """ORT static quantisation (QDQ, per-channel, percentile ranges) of the core's nodes only, in ``target``'s flavour."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"image": to_uint8(h)[None]} for h, _ in calib])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    skip = set(float_nodes(fp32))
    nodes = [n.name for n in fp32.graph.node if n.name.startswith(core_prefix) and n.name not in skip]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(fp32, src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(src, dst, Reader(), nodes_to_quantize=nodes, **ort_static_options(target))
        return onnx.load(dst)


def evaluate_pair(
    fp32: "bytes | str", quant: "bytes | str", holdout: Sequence[Sample], threads: int = 2
) -> Dict[str, Any]:
    """PSNR/SSIM of the FP32 and the lower-precision graph on hold-out images."""
    from edgehaze.export.onnx_export import session
    from edgehaze.metrics.fullref import psnr, ssim

    s_ref, s_q = session(fp32, threads), session(quant, threads)
    rows: Dict[str, List[float]] = {"psnr_fp32": [], "psnr": [], "ssim_fp32": [], "ssim": [], "psnr_vs_fp32": []}
    for hazy, gt in holdout:
        u8 = to_uint8(hazy)[None]
        a = s_ref.run(["dehazed"], {"image": u8})[0][0].astype(np.float32) / 255.0
        b = s_q.run(["dehazed"], {"image": u8})[0][0].astype(np.float32) / 255.0
        rows["psnr_vs_fp32"].append(min(psnr(b, a), 100.0))
        if gt is not None:
            rows["psnr_fp32"].append(psnr(a, gt))
            rows["psnr"].append(psnr(b, gt))
            rows["ssim_fp32"].append(ssim(a, gt))
            rows["ssim"].append(ssim(b, gt))
    acc: Dict[str, Any] = {k: (round(float(np.mean(v)), 4) if v else None) for k, v in rows.items()}
    acc["psnr_drop"] = (round(acc["psnr_fp32"] - acc["psnr"], 4) if acc["psnr"] is not None else None)
    acc["holdout_images"] = len(holdout)
    return acc


def check_drop(acc: Dict[str, Any], max_drop: float, force: bool, warn: Callable[[str], None]) -> None:
    """Refuse (:class:`AccuracyDropError`) when the hold-out PSNR drop passes ``max_drop``."""
    drop = acc.get("psnr_drop")
    if drop is None:
        warn("the calibration data has no ground truth: the PSNR drop cannot be measured; "
             f"INT8 vs FP32 PSNR on hold-out images: {acc.get('psnr_vs_fp32')} dB")
        return
    if drop > max_drop:
        msg = (f"INT8 loses {drop:.3f} dB PSNR on {acc['holdout_images']} hold-out image(s) "
               f"(FP32 {acc['psnr_fp32']:.2f} dB -> INT8 {acc['psnr']:.2f} dB), more than --max-psnr-drop "
               f"{max_drop:g}; more --qat-steps or --calib images usually help; --force writes it anyway")
        if not force:
            raise AccuracyDropError(msg)
        warn(msg + " (written because of --force)")


class AccuracyDropError(EdgehazeError):
    """The quantised model lost more accuracy than allowed; nothing was written."""
