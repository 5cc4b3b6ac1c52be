"""Pre-train a small Depth Anything teacher on exact procedural depth.

The demo (``edgehaze demo``) has no pretrained weights to start from, yet the
fused dehazer is only worth building when its depth teacher really knows
depth. Procedural scenes come with exact per-pixel depth, so a small network
of the Depth Anything V2 architecture (transformers'
``DepthAnythingForDepthEstimation``, the ``tiny`` size of
:mod:`edgehaze.models.depth.dav2`) is trained here to predict relative
inverse depth from clear *and* hazy renderings of the same scenes (the
teacher sees hazy frames at run time).

Loss: scale-and-shift-invariant L1 on inverse depth (MiDaS / Depth Anything's
relative-depth objective): per image, the prediction is aligned to the
target's inverse depth with the least-squares scale and shift, then the mean
absolute difference is taken, with the target normalised by its own mean
absolute deviation so every image weighs the same. The network's output is
what the teacher class computes (its own preprocessing and the official head
without ``max_depth``), so what is trained is exactly what
``build_dehazer(depth="tiny", depth_weights=FOLDER)`` runs later.

The result is saved as a local Hugging Face model folder (``config.json`` +
``model.safetensors``), one of the formats the teacher loader reads, so the
demo builds its teacher through the same code path as DAv2-L.

Quality (:func:`depth_quality`): Pearson correlation between predicted and
exact inverse depth, and AbsRel / delta<1.25 of the scale-and-shift-aligned
inverse depth, per image, averaged over a split.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from edgehaze.errors import EdgehazeError

#: depths below this (metres) are clipped before inverting (no division blow-up)
MIN_DEPTH = 0.1


# ---------------------------------------------------------------- data
def load_depth_split(root: "str | Path", split: str, limit: Optional[int] = None) -> Dict[str, np.ndarray]:
    """A procedural split as arrays: ``clear``/``hazy`` N x H x W x 3, ``depth`` N x H x W (metres).

    ``root`` is a folder written by :func:`edgehaze.data.procedural.make_procedural_dataset`.
    """
    from edgehaze.imageio import read_image

    base = Path(root) / split
    depth_files = sorted((base / "depth").glob("*.npy"))
    if not depth_files:
        raise EdgehazeError(f"{base / 'depth'}: no depth maps; generate procedural data first "
                            "(edgehaze synth --procedural N --out DIR)")
    if limit is not None:
        depth_files = depth_files[:limit]
    clear, hazy, depth = [], [], []
    for f in depth_files:
        clear.append(read_image(base / "GT" / f"{f.stem}.png"))
        hazy.append(read_image(base / "hazy" / f"{f.stem}.png"))
        depth.append(np.load(f, allow_pickle=False).astype(np.float32))
    return {"clear": np.stack(clear), "hazy": np.stack(hazy), "depth": np.stack(depth)}


def inverse_depth(depth_m: torch.Tensor) -> torch.Tensor:
    """Inverse depth (1/m), larger = nearer: what Depth Anything predicts up to scale and shift."""
    return 1.0 / depth_m.clamp_min(MIN_DEPTH)


# ---------------------------------------------------------------- loss and alignment
def align_scale_shift(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``s * pred + t`` with the per-image least-squares ``s, t`` against ``target`` (B x H x W)."""
    p = pred.flatten(1)
    g = target.flatten(1)
    pm, gm = p.mean(1, keepdim=True), g.mean(1, keepdim=True)
    pc, gc = p - pm, g - gm
    s = (pc * gc).sum(1, keepdim=True) / (pc * pc).sum(1, keepdim=True).clamp_min(1e-12)
    t = gm - s * pm
    return (s * p + t).view_as(pred)


def ssi_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant L1 between predicted and exact inverse depth (B x H x W).

    Both sides are normalised per image by their median and mean absolute
    deviation (MiDaS), so the loss is the same whatever the units and no image
    dominates; unlike a least-squares fit, this also gives a useful gradient
    when the prediction is still nearly constant.
    """

    def normalise(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        med = flat.median(dim=1, keepdim=True).values
        mad = (flat - med).abs().mean(1, keepdim=True).clamp_min(1e-6)
        return (flat - med) / mad

    return (normalise(pred) - normalise(target)).abs().mean()


def predict_inverse_depth(teacher: Any, image01: torch.Tensor) -> torch.Tensor:
    """The teacher's relative inverse depth at the input's size, *with* gradients.

    The same computation as ``DepthAnythingTeacher.depth`` (official resize,
    ImageNet normalisation, head without ``max_depth``), minus its ``no_grad``.
    """
    d = teacher.depth_from_pixels(teacher.preprocess(image01))
    d = F.interpolate(d[:, None], size=tuple(image01.shape[-2:]), mode="bilinear", align_corners=True)
    return d[:, 0]


# ---------------------------------------------------------------- quality
def depth_metrics(pred_inv: np.ndarray, gt_depth: np.ndarray) -> Dict[str, float]:
    """Quality of one relative inverse-depth map against exact depth (metres).

    pearson: correlation of predicted and exact inverse depth (1 = perfect,
    0 = no depth knowledge). abs_rel / delta1: of the prediction aligned to
    the exact inverse depth with least-squares scale and shift (clipped to
    the target's positive range), as relative-depth benchmarks do.
    """
    p = torch.as_tensor(pred_inv, dtype=torch.float64)[None]
    g = inverse_depth(torch.as_tensor(gt_depth, dtype=torch.float64))[None]
    aligned = align_scale_shift(p, g).clamp(min=float(g.min()), max=float(g.max()))
    pf, gf = p.flatten(), g.flatten()
    pc, gc = pf - pf.mean(), gf - gf.mean()
    denom = math.sqrt(float((pc * pc).sum()) * float((gc * gc).sum()))
    pearson = float((pc * gc).sum()) / denom if denom > 0 else 0.0
    ratio = torch.maximum(aligned / g, g / aligned)
    return {
        "pearson": pearson,
        "abs_rel": float(((aligned - g).abs() / g).mean()),
        "delta1": float((ratio < 1.25).double().mean()),
    }


@torch.no_grad()
def depth_quality(provider: Any, data: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Mean :func:`depth_metrics` of a depth provider on clear and on hazy images."""
    out: Dict[str, Any] = {"images": int(len(data["depth"]))}
    for kind in ("clear", "hazy"):
        rows = []
        for img, dep in zip(data[kind], data["depth"]):
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
            pred = provider.depth(x)[0].double().numpy()
            rows.append(depth_metrics(pred, dep))
        out[kind] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return out


# ---------------------------------------------------------------- training
def _batches(n: int, batch_size: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


def pretrain_teacher(
    data_root: "str | Path",
    out: "str | Path",
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 2e-3,
    input_size: int = 98,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 10,
) -> Dict[str, Any]:
    """Train the ``tiny`` Depth Anything network on the procedural ``train`` split.

    Each step takes ``batch_size`` scenes, each as its clear or its hazy
    rendering (a coin flip per image) and horizontally flipped at random,
    and minimises :func:`ssi_loss` against the exact inverse depth. AdamW
    with a cosine learning rate. ``out`` becomes a Hugging Face model folder
    (written to a temporary folder beside it, then renamed into place).
    Returns ``{"weights", "losses" [(step, loss)], "steps", "input_size",
    "train_images", "seconds"}``.
    """
    from edgehaze.models.dehazer import build_depth

    if steps < 1 or batch_size < 1:
        raise EdgehazeError(f"teacher pretraining needs steps >= 1 and batch_size >= 1 (got {steps}, {batch_size})")
    data = load_depth_split(data_root, "train")
    n = len(data["depth"])
    if n < batch_size:
        batch_size = n
    torch.manual_seed(seed)
    teacher = build_depth("tiny", input_size=input_size)
    net = teacher.model
    net.requires_grad_(True)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    images = {k: torch.from_numpy(data[k]).permute(0, 3, 1, 2).contiguous() for k in ("clear", "hazy")}
    target_all = inverse_depth(torch.from_numpy(data["depth"]))
    rng = np.random.default_rng(seed)
    batches = _batches(n, batch_size, rng)
    losses: List[Tuple[int, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="teacher depth", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(next(batches))
        use_hazy = torch.from_numpy(rng.random(len(idx)) < 0.5)[:, None, None, None]
        x = torch.where(use_hazy, images["hazy"][idx], images["clear"][idx])
        y = target_all[idx]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        loss = ssi_loss(predict_inverse_depth(teacher, x), y)
        if not torch.isfinite(loss):
            raise EdgehazeError(f"teacher pretraining diverged at step {step} (loss {float(loss)}); lower its lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step == 1 or step % log_every == 0 or step == steps:
            losses.append((step, float(loss.detach())))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    if bar is not None:
        bar.close()
    net.requires_grad_(False)
    weights = save_teacher_folder(net, out)
    return {
        "weights": str(weights),
        "losses": losses,
        "steps": steps,
        "batch_size": batch_size,
        "input_size": input_size,
        "train_images": n,
        "seconds": time.perf_counter() - t0,
    }


def save_teacher_folder(net: torch.nn.Module, out: "str | Path") -> Path:
    """Save a transformers Depth Anything model as a local HF folder, atomically (folder rename)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    net.save_pretrained(str(tmp), safe_serialization=True)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def load_teacher(weights: "str | Path", input_size: int) -> Any:
    """The pre-trained teacher through the regular loader (``build_depth('tiny', weights=...)``)."""
    from edgehaze.models.dehazer import build_depth

    return build_depth("tiny", weights=str(weights), input_size=input_size)


__all__: Sequence[str] = (
    "align_scale_shift",
    "depth_metrics",
    "depth_quality",
    "inverse_depth",
    "load_depth_split",
    "load_teacher",
    "predict_inverse_depth",
    "pretrain_teacher",
    "save_teacher_folder",
    "ssi_loss",
)
