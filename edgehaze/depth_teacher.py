"""A depth teacher that knows real scenes (issue 16, item 4).

The real Depth Anything V2-L weights cannot be shipped or downloaded here, so
a small network of the same architecture (transformers'
``DepthAnythingForDepthEstimation``, the ``tiny`` size of
:mod:`edgehaze.models.depth.dav2`) is trained on *real* RGB-D and stands in
for DAv2-L until a user passes the real weights (``model.depth_weights``).

Data (read through :mod:`edgehaze.data.rgbd`, never copied): the
transmission-derived relative depth of SOTS-indoor training scenes and
FRIDA2's metric depth. Splits are the written-down ones of
:func:`edgehaze.data.rgbd.scene_split`: FRIDA2's every 5th scene and the whole
``sots_indoor`` folder are test scenes and are only ever evaluated; nothing
here chooses a checkpoint on them (the last step is saved).

Loss: scale-and-shift-invariant L1 on inverse depth (MiDaS), restricted to
valid pixels (measured depth, not sky, transmission recoverable). Each image
is shown clear or with haze synthesised from its own depth
(``J t + A (1 - t)``), since the teacher sees hazy frames at run time.
Metrics: AbsRel and delta<1.25 of the prediction aligned (least-squares scale
and shift on valid pixels) to the true inverse depth, per image, averaged.
The saved folder loads exactly like DAv2-L weights:
``build_dehazer(depth="tiny", depth_weights=FOLDER)``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from edgehaze.demo_teacher import MIN_DEPTH, predict_inverse_depth, save_teacher_folder
from edgehaze.errors import EdgehazeError

#: training/evaluation resolution (width, height): 4:3 like SOTS (620x460) and FRIDA2 (640x480)
SIZE = (160, 120)


def _resize(scene: Any, size: Tuple[int, int]) -> Dict[str, np.ndarray]:
    import cv2

    clear = cv2.resize(scene.clear, size, interpolation=cv2.INTER_AREA)
    depth = cv2.resize(scene.depth, size, interpolation=cv2.INTER_NEAREST)
    valid = cv2.resize(scene.valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    valid &= np.isfinite(depth) & (depth > 0)
    return {"clear": clear.astype(np.float32), "depth": depth.astype(np.float32), "valid": valid}


#: training sources a data folder may hold (at least one)
TRAIN_SOURCES = ("sots_indoor_train", "frida2")


def data_folder(path: "str | Path") -> Path:
    """The data folder (holding ``sots_indoor_train/`` and/or ``frida2/``) given it or the folder above it.

    ``--shared`` names the folder above ``data/``; the demo passes the data
    folder itself. Both are accepted so neither caller has to know the other.
    """
    path = Path(path)
    if not any((path / s).is_dir() for s in TRAIN_SOURCES) and (path / "data").is_dir():
        return path / "data"
    return path


def real_depth_scenes(data: "str | Path", size: Tuple[int, int] = SIZE,
                      val_every: Optional[int] = None) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """``{"train", "val", "test", ...}`` resized scenes of a data folder (SOTS-indoor pairs and/or FRIDA2).

    ``data``: the data folder or the folder above it (:func:`data_folder`).
    A missing ``sots_indoor/`` (test set) leaves its test part empty;
    ``val_every``: every K-th remaining scene validates (default
    :data:`edgehaze.data.rgbd.VAL_EVERY`, the split ``edgehaze synth`` writes).
    """
    from edgehaze.data.rgbd import FRIDA2_TEST_EVERY, VAL_EVERY, load_frida2_scenes, load_pair_scenes, scene_split

    data = data_folder(data)
    val_every = VAL_EVERY if val_every is None else int(val_every)
    if not any((data / s).is_dir() for s in TRAIN_SOURCES):
        raise EdgehazeError(f"{data}: holds neither {TRAIN_SOURCES[0]}/ nor {TRAIN_SOURCES[1]}/ (pass the shared "
                            "folder or its data/ folder: --shared, --data or EDGEHAZE_SHARED)")
    out: Dict[str, List[Dict[str, np.ndarray]]] = {"train": [], "val": [], "test": [], "test_sots_indoor": [], "test_frida2": []}
    if (data / "sots_indoor_train").is_dir():
        sots_train = {s.name: s for s in load_pair_scenes(data / "sots_indoor_train")}
        split = scene_split(list(sots_train), test_every=0, val_every=val_every)  # its test scenes live elsewhere
        for part in ("train", "val"):
            out[part] += [_resize(sots_train[n], size) for n in split[part]]
    if (data / "sots_indoor").is_dir():
        out["test_sots_indoor"] = [_resize(s, size) for s in load_pair_scenes(data / "sots_indoor")]  # TEST ONLY
    if (data / "frida2").is_dir():
        frida = {s.name: s for s in load_frida2_scenes(data / "frida2")}
        split = scene_split(list(frida), test_every=FRIDA2_TEST_EVERY, val_every=val_every)
        for part in ("train", "val"):
            out[part] += [_resize(frida[n], size) for n in split[part]]
        out["test_frida2"] = [_resize(frida[n], size) for n in split["test"]]
    if not out["train"]:
        raise EdgehazeError(f"{data}: no training scenes for the depth teacher (every scene is val or test)")
    out["test"] = out["test_sots_indoor"] + out["test_frida2"]
    return out


def _stack(scenes: Sequence[Dict[str, np.ndarray]]) -> Dict[str, torch.Tensor]:
    return {
        "clear": torch.from_numpy(np.stack([s["clear"] for s in scenes])).permute(0, 3, 1, 2).contiguous(),
        "inv": 1.0 / torch.from_numpy(np.stack([s["depth"] for s in scenes])).clamp_min(MIN_DEPTH),
        "valid": torch.from_numpy(np.stack([s["valid"] for s in scenes])),
        "rel": torch.from_numpy(np.stack([_relative(s) for s in scenes])),
    }


def _relative(scene: Dict[str, np.ndarray]) -> np.ndarray:
    """Depth scaled so the farthest valid pixel is 1 (invalid/sky: 1.5), for haze synthesis."""
    d, v = scene["depth"], scene["valid"]
    far = float(d[v].max()) if v.any() else 1.0
    return np.where(v, d / far, 1.5).astype(np.float32)


def _relative_batch(inv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """:func:`_relative` from a batch of inverse depth (after a crop): farthest valid pixel 1, invalid 1.5."""
    d = 1.0 / inv.clamp_min(1e-6)
    far = torch.where(valid, d, torch.zeros_like(d)).flatten(1).amax(1).clamp_min(1e-6)[:, None, None]
    return torch.where(valid, d / far, torch.full_like(d, 1.5))


def masked_ssi_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """MiDaS scale-and-shift-invariant L1 over valid pixels (median / mean absolute deviation per image)."""
    losses = []
    for p, g, m in zip(pred, target, valid):
        p, g = p[m], g[m]
        if p.numel() < 16:
            continue

        def norm(x: torch.Tensor) -> torch.Tensor:
            med = x.median()
            return (x - med) / (x - med).abs().mean().clamp_min(1e-6)

        losses.append((norm(p) - norm(g)).abs().mean())
    if not losses:
        raise EdgehazeError("no image in the batch has enough valid depth pixels")
    return torch.stack(losses).mean()


def aligned_metrics(pred_inv: torch.Tensor, gt_inv: torch.Tensor, valid: torch.Tensor) -> Dict[str, float]:
    """AbsRel and delta<1.25 of the least-squares scale/shift-aligned inverse depth, valid pixels."""
    p, g = pred_inv[valid].double(), gt_inv[valid].double()
    pc, gc = p - p.mean(), g - g.mean()
    s = float((pc * gc).sum() / (pc * pc).sum().clamp_min(1e-12))
    aligned = (s * p + (g.mean() - s * p.mean())).clamp(min=float(g.min()), max=float(g.max()))
    ratio = torch.maximum(aligned / g, g / aligned)
    return {"abs_rel": float(((aligned - g).abs() / g).mean()), "delta1": float((ratio < 1.25).double().mean())}


def _mean_rows(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Per-image :func:`aligned_metrics` averaged, with the image count."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"images": len(rows)}


@torch.no_grad()
def evaluate(teacher: Any, scenes: Sequence[Dict[str, np.ndarray]]) -> Dict[str, float]:
    """Mean :func:`aligned_metrics` on the clear images of ``scenes`` (``{"images": 0}`` for none)."""
    if not scenes:
        return {"images": 0}
    batch = _stack(scenes)
    rows = []
    for i in range(len(scenes)):
        pred = predict_inverse_depth(teacher, batch["clear"][i:i + 1])[0]
        rows.append(aligned_metrics(pred, batch["inv"][i], batch["valid"][i]))
    return _mean_rows(rows)


def ramp_reference(scenes: Sequence[Dict[str, np.ndarray]]) -> Dict[str, float]:
    """:func:`evaluate`'s metrics for a depth-blind guess: inverse depth growing linearly down the image.

    Rooms and roads are nearer at the bottom of the frame, so a vertical ramp
    (aligned per image like any prediction) already scores; a teacher is
    only worth its cost by what it adds over this line.
    """
    if not scenes:
        return {"images": 0}
    batch = _stack(scenes)
    h, w = batch["inv"].shape[-2:]
    ramp = torch.linspace(1e-3, 1.0, h, dtype=torch.float32)[:, None].expand(h, w)
    return _mean_rows([aligned_metrics(ramp, batch["inv"][i], batch["valid"][i]) for i in range(len(scenes))])


def _hazy(clear: torch.Tensor, rel: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Haze from the image's own depth: beta in [0.5, 2.5], airlight in [0.7, 1]."""
    b = clear.shape[0]
    beta = 0.5 + 2.0 * torch.rand(b, 1, 1, 1, generator=gen)
    a = 0.7 + 0.3 * torch.rand(b, 1, 1, 1, generator=gen)
    t = torch.exp(-beta * rel[:, None])
    return clear * t + a * (1 - t)


def _augment(x: torch.Tensor, inv: torch.Tensor, valid: torch.Tensor, gen: torch.Generator,
             min_scale: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random resized crops (side ``min_scale``..1 of the image, aspect kept) and colour jitter, per image.

    With 76 training images the teacher memorises them (training AbsRel 0.10
    vs 0.22 on test scenes at 6000 steps); new framings and colours are the
    cheapest new data. The crop is resized back to the batch size (bilinear
    for the image, nearest for inverse depth and mask, as the scenes
    were resized); the jitter
    (brightness x0.8..1.2, contrast x0.8..1.2, saturation x0.7..1.3) leaves
    depth alone. Scale-and-shift invariance of the loss makes the inverse
    depth of a crop still a valid target.
    """
    import torch.nn.functional as F

    b, _, h, w = x.shape
    xs, invs, valids = [], [], []
    for i in range(b):
        s = float(min_scale + (1 - min_scale) * torch.rand((), generator=gen))
        ch, cw = max(8, round(h * s)), max(8, round(w * s))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=gen))
        win = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        xs.append(F.interpolate(x[i:i + 1, :, win[0], win[1]], size=(h, w), mode="bilinear", align_corners=False))
        invs.append(F.interpolate(inv[i:i + 1, None, win[0], win[1]], size=(h, w), mode="nearest")[:, 0])
        valids.append(F.interpolate(valid[i:i + 1, None, win[0], win[1]].float(), size=(h, w), mode="nearest")[:, 0] > 0.5)
    x, inv, valid = torch.cat(xs), torch.cat(invs), torch.cat(valids)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=gen)  # noqa: E731
    grey = x.mean(1, keepdim=True)
    x = grey + u(0.7, 1.3) * (x - grey)                      # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (mean + u(0.8, 1.2) * (x - mean)) * u(0.8, 1.2)      # contrast, brightness
    return x.clamp(0, 1), inv, valid


EVAL_PARTS = ("val", "test_sots_indoor", "test_frida2", "test")


def train_real_teacher(
    data: "str | Path", out: "str | Path", steps: int = 400, batch_size: int = 8, lr: float = 2e-3,
    input_size: int = 98, seed: int = 0, log_every: int = 50, val_every: Optional[int] = None,
    augment: bool = False, weight_decay: float = 1e-4, init: "str | Path | None" = None,
) -> Dict[str, Any]:
    """Train the ``tiny`` Depth Anything network on real RGB-D; save it as an HF folder at ``out``.

    ``data``: the data folder or the folder above it; ``val_every`` as in
    :func:`real_depth_scenes`; ``augment``: random resized crops and colour
    jitter (:func:`_augment`) before the haze; ``init``: a ``tiny`` teacher
    folder to start from (e.g. the procedural demo's, pretrained on exact
    procedural depth) instead of random weights. Returns the untrained and trained metrics on
    the val and test scenes (a part with no scenes: ``{"images": 0}``), the
    same metrics of a vertical ramp (:func:`ramp_reference`), the losses and the time.
    """
    from edgehaze.models.dehazer import build_depth

    scenes = real_depth_scenes(data, val_every=val_every)
    train = _stack(scenes["train"])
    n = train["clear"].shape[0]
    torch.manual_seed(seed)
    if init is not None:
        from edgehaze.demo_teacher import load_teacher

        teacher = load_teacher(init, input_size)
    else:
        teacher = build_depth("tiny", input_size=input_size)
    report: Dict[str, Any] = {"untrained": {k: evaluate(teacher, scenes[k]) for k in EVAL_PARTS},
                              "ramp": {k: ramp_reference(scenes[k]) for k in EVAL_PARTS},
                              "train_images": n, "steps": steps, "input_size": input_size, "size": list(SIZE),
                              "augment": bool(augment), "weight_decay": weight_decay,
                              "init": None if init is None else str(init)}
    net = teacher.model
    net.requires_grad_(True)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    losses: List[Tuple[int, float]] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randperm(n, generator=gen)[:batch_size]
        x, inv, valid, rel = (train[k][idx] for k in ("clear", "inv", "valid", "rel"))
        if augment:  # the haze below still comes from the crop's own (relative) depth
            x, inv, valid = _augment(x, inv, valid, gen)
            rel = _relative_batch(inv, valid)
        hazy = torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5
        x = torch.where(hazy, _hazy(x, rel, gen), x)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        inv = torch.where(flip[:, None, None], inv.flip(-1), inv)
        valid = torch.where(flip[:, None, None], valid.flip(-1), valid)
        loss = masked_ssi_loss(predict_inverse_depth(teacher, x), inv, valid)
        if not torch.isfinite(loss):
            raise EdgehazeError(f"teacher training diverged at step {step} (loss {float(loss)}); lower its lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step == 1 or step % log_every == 0 or step == steps:
            losses.append((step, float(loss.detach())))
    net.requires_grad_(False)
    teacher.eval()
    report["trained"] = {k: evaluate(teacher, scenes[k]) for k in EVAL_PARTS}
    report.update(losses=losses, seconds=time.perf_counter() - t0, weights=str(save_teacher_folder(net, out)))
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m edgehaze.depth_teacher --shared DIR --out FOLDER [--steps N]``: train, print the report."""
    import argparse
    import json
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("EDGEHAZE_SHARED"),
                    help="the shared folder (holds data/), or a data folder itself")
    ap.add_argument("--out", required=True, help="output HF model folder (loads as depth=tiny, depth_weights=OUT)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=98)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", action="store_true", help="random resized crops and colour jitter")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--init", default=None, help="a tiny teacher folder to start from (default: random weights)")
    args = ap.parse_args(argv)
    if not args.shared:
        raise SystemExit("edgehaze.depth_teacher: pass --shared DIR or set EDGEHAZE_SHARED")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = train_real_teacher(args.shared, args.out, steps=args.steps, batch_size=args.batch_size,
                                input_size=args.input_size, seed=args.seed, augment=args.augment,
                                weight_decay=args.weight_decay, init=args.init)
    print(json.dumps({k: v for k, v in report.items() if k != "losses"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
