"""The paper's two-stage teacher recipe on top of :class:`~edgehaze.train.trainer.Trainer`.

Stage ``rgb``: the bare backbone (``build_dehazer(depth=None)``), from
scratch, from an edgehaze checkpoint (``rgb.init``) or from official weights
(``model.backbone_weights``), trained with L1 (+ optional SSIM/FFT).

Stage ``fused``: the same backbone with fusion blocks at its fusion points
and the frozen depth teacher. The stage-1 weights are loaded into
``model.backbone`` (the fused blocks wrap backbone modules, so the stage-1
key ``backbone.P.<rest>`` of a wrapped module ``P`` becomes
``backbone.P.block.<rest>``: :func:`fused_state_from_stage1`). The
zero-convolutions make step 0 of this stage compute exactly the stage-1
model. It fine-tunes with ``CosineAnnealingWarmRestarts`` in the paper's two
modes (Table 4): ``finetune: all`` or ``finetune: depth`` (backbone frozen,
BatchNorm statistics included; only each fused block's z1/rdf/z2 and a
trainable depth provider learn).

Depth-feature cache (``train.depth_cache``): the frozen teacher dominates
the cost of a step (DAv2-L ~6 s per 518x518 frame on a laptop CPU), and for
a dataset without random augmentation its features of an image never
change. The cache stores them per image (float16 safetensors under
``RUN/depth_cache/``, keyed by the file, its size and mtime, the teacher id,
its build arguments and input size) and feeds them to the model as
``depth_feats``. Random crops/flips would make cached features wrong, so the
config rejects the combination (``data.crop: null``, ``data.flip: false``
are required).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from edgehaze.errors import CheckpointError, ConfigError
from edgehaze.train.config import TrainConfig, replace, save_config, to_dict
from edgehaze.train.data import build_train_set, build_val_set, ensure_data
from edgehaze.train.ddp import DistContext, barrier, cleanup, init_distributed, unwrap
from edgehaze.train.depth_crop import FullImageDepth
from edgehaze.train.losses import RestorationLoss
from edgehaze.train.stability import StabilityTerm, Window, stability_term, sub_box
from edgehaze.train.state import seed_everything
from edgehaze.train.trainer import StageResult, Trainer

FUSION_PARTS = ("z1", "rdf", "z2")


# ---------------------------------------------------------------- stage-1 -> stage-2 weights
def fused_state_from_stage1(
    stage1: Dict[str, torch.Tensor], points: Sequence[str], prefix: str = "backbone."
) -> Dict[str, torch.Tensor]:
    """Rename stage-1 keys for a model whose ``points`` are wrapped in fused blocks.

    ``{prefix}P.<rest>`` -> ``{prefix}P.block.<rest>`` for every fusion point
    ``P``; other keys are kept. Keys without ``prefix`` are taken as a bare
    backbone state dict and get the prefix.
    """
    ordered = sorted(points, key=len, reverse=True)
    out: Dict[str, torch.Tensor] = {}
    for key, value in stage1.items():
        rest = key[len(prefix):] if key.startswith(prefix) else key
        for p in ordered:
            if rest.startswith(p + "."):
                rest = f"{p}.block.{rest[len(p) + 1:]}"
                break
        out[prefix + rest] = value
    return out


def _is_fusion_key(key: str, points: Sequence[str], prefix: str = "backbone.") -> bool:
    return any(key.startswith(f"{prefix}{p}.{part}.") for p in points for part in FUSION_PARTS)


def load_stage1_weights(model: nn.Module, stage1: Dict[str, torch.Tensor], source: str = "stage-1 weights") -> None:
    """Load a bare-backbone state dict into a fused model's backbone (strict).

    Every backbone tensor outside the fusion parts must be present, and
    nothing else; the fusion parts keep their (zero) initialisation.
    """
    points = [p.name for p in getattr(model, "points", [])]
    mapped = fused_state_from_stage1({k: v for k, v in stage1.items() if not k.startswith("depth.")}, points)
    expected = {k for k in model.state_dict() if k.startswith("backbone.") and not _is_fusion_key(k, points)}
    missing = sorted(expected - set(mapped))
    unexpected = sorted(set(mapped) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not fit backbone '{model.backbone.arch}' (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); pass a checkpoint of the same backbone and backbone_kwargs"
        )
    model.load_state_dict(mapped, strict=False)


def stage1_state_from_checkpoint(path: str, cfg: TrainConfig) -> Dict[str, torch.Tensor]:
    """Backbone weights of an edgehaze checkpoint, checked against ``model.backbone``.

    ``path`` may name a shipped model (``rgb.init=edgehaze-s``): fine-tuning
    on your own data then starts from the shipped student's backbone (a fused
    checkpoint, whose backbone is taken on purpose).
    """
    from safetensors.torch import load_file

    from edgehaze.checkpoint import read_metadata
    from edgehaze.model_zoo import shipped_checkpoint

    shipped = shipped_checkpoint(path)
    path = str(shipped) if shipped is not None else path
    meta = read_metadata(path)
    build = meta.get("build", {})
    if build.get("backbone") != cfg.model.backbone:
        raise ConfigError(f"{path}: a '{build.get('backbone')}' checkpoint, but model.backbone={cfg.model.backbone}")
    if build.get("depth") and shipped is None:
        raise ConfigError(f"{path}: a fused (depth '{build.get('depth')}') checkpoint; stage 1 needs a bare-backbone one")
    state = {k: v for k, v in load_file(str(path)).items() if k.startswith("backbone.")}
    if build.get("depth"):  # a shipped (fused) student: its backbone without the fusion blocks, in stage-1 layout
        from edgehaze.checkpoint import load_dehazer

        points = [pt.name for pt in getattr(load_dehazer(path)[0], "points", [])]
        state = {k: v for k, v in state.items() if not _is_fusion_key(k, points)}
        for pt in points:
            state = {(k.replace(f"backbone.{pt}.block.", f"backbone.{pt}.", 1)
                      if k.startswith(f"backbone.{pt}.block.") else k): v for k, v in state.items()}
    return state


# ---------------------------------------------------------------- freezing
def fusion_param_groups(model: nn.Module, params: List[nn.Parameter], scale: float) -> List[dict]:
    """Split ``params`` into the fusion blocks' (at ``scale`` x lr) and the rest."""
    fusion_ids = {
        id(p) for block in model.fused_blocks() for part in FUSION_PARTS for p in getattr(block, part).parameters()
    }
    fusion = [p for p in params if id(p) in fusion_ids]
    rest = [p for p in params if id(p) not in fusion_ids]
    return [g for g in ({"params": rest}, {"params": fusion, "lr_scale": scale}) if g["params"]]


def configure_finetune(model: nn.Module, mode: str) -> List[nn.Parameter]:
    """Set ``requires_grad`` for the fused stage's mode; returns what trains.

    ``all``: backbone + fusion blocks (+ a trainable depth provider).
    ``depth``: only the fusion blocks' z1/rdf/z2 (+ a trainable depth provider).
    A frozen teacher never trains.
    """
    if mode not in ("all", "depth"):
        raise ConfigError(f"finetune must be 'all' or 'depth', got {mode!r}")
    fusion_ids = {
        id(p) for block in model.fused_blocks() for part in FUSION_PARTS for p in getattr(block, part).parameters()
    }
    depth = getattr(model, "depth", None)
    depth_trains = depth is not None and bool(depth.trainable)
    for name, p in model.named_parameters():
        if name.startswith("depth."):
            p.requires_grad_(depth_trains)
        elif mode == "all":
            p.requires_grad_(True)
        else:
            p.requires_grad_(id(p) in fusion_ids)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode_keeping_frozen_norms(model: nn.Module) -> None:
    """``model.train()``, but normalisation layers with frozen weights stay in eval.

    With ``finetune: depth`` the backbone must not change at all, and a
    BatchNorm in training mode would still update its running statistics.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


# ---------------------------------------------------------------- depth cache
class DepthFeatureCache:
    """Teacher features per training image on disk (see module docstring)."""

    def __init__(self, root: Path, provider: Any, dataset: Any, mode: str = "gated") -> None:
        kwargs = {k: v for k, v in provider.build_kwargs().items()}
        # the baseline fusion modes store depth maps, not features: never the same files
        extra = {} if mode == "gated" else {"fusion_mode": mode}
        self.teacher_key = json.dumps({"id": provider.model_id, **kwargs, **extra}, sort_keys=True, default=str)
        tag = hashlib.sha1(self.teacher_key.encode()).hexdigest()[:10]
        self.dir = Path(root) / f"{provider.model_id}-{kwargs.get('input_size', 'na')}-{tag}"
        self.dataset = dataset
        self.hits = 0
        self.misses = 0

    def _file(self, index: int) -> Path:
        path = Path(self.dataset.pairs[index].hazy).resolve()
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{self.teacher_key}"
        return self.dir / f"{hashlib.sha1(key.encode()).hexdigest()}.safetensors"

    def features(self, model: nn.Module, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """The batch's features (float32, on the batch's device), computing misses."""
        from safetensors.torch import load_file, save_file

        from edgehaze.fsutil import atomic_write

        hazy = batch["hazy"]
        indices = [int(i) for i in batch["index"]]
        per_image: List[Optional[List[torch.Tensor]]] = []
        missing = []
        for j, idx in enumerate(indices):
            f = self._file(idx)
            if f.is_file():
                sd = load_file(str(f))
                per_image.append([sd[f"level{k}"] for k in range(len(sd))])
                self.hits += 1
            else:
                per_image.append(None)
                missing.append(j)
        if missing:
            self.misses += len(missing)
            feats = model.depth_features(hazy[missing], **reference_depth_kwargs(model, batch, missing))
            for row, j in enumerate(missing):
                levels = [f[row].detach().to(torch.float16).cpu().contiguous() for f in feats]
                per_image[j] = levels
                state = {f"level{k}": t for k, t in enumerate(levels)}
                atomic_write(self._file(indices[j]), lambda tmp, s=state: save_file(s, tmp))
        n_levels = len(per_image[0])  # type: ignore[arg-type]
        return [
            torch.stack([img[k] for img in per_image]).to(device=hazy.device, dtype=torch.float32)  # type: ignore[index]
            for k in range(n_levels)
        ]


def reference_depth_kwargs(model: nn.Module, batch: Dict[str, Any], rows: Optional[List[int]] = None) -> Dict[str, Any]:
    """``{"reference": gt}`` for a model whose depth input needs the clear image
    in training (fusion selfpromer: the depth of the ground truth), else ``{}``."""
    if not getattr(model, "uses_reference_depth", False) or batch.get("gt") is None:
        return {}
    gt = batch["gt"]
    return {"reference": gt if rows is None else gt[rows]}


# ---------------------------------------------------------------- step / validation
def make_step_fn(loss_fn: RestorationLoss, cache: Optional[Any] = None,  # type: ignore[no-untyped-def]
                 stability: Optional[StabilityTerm] = None):
    """The teacher's micro-batch step: dehaze the hazy batch, loss against GT.

    ``cache``: a :class:`DepthFeatureCache` or :class:`~edgehaze.train.depth_crop.FullImageDepth`
    giving the frozen teacher's features; ``stability``: the single-frame
    stability term (:mod:`edgehaze.train.stability`), logged as ``stability``.
    """

    def forward(net: nn.Module, batch: Dict[str, Any], hazy: torch.Tensor, win: Optional[Window] = None) -> torch.Tensor:
        """Dehaze ``hazy`` (the batch's crops, or window ``win`` of them) with the depth that window sees."""
        model = unwrap(net)
        if getattr(model, "depth", None) is not None and cache is not None:
            if win is None:
                return net(hazy, depth_feats=cache.features(model, batch))
            if isinstance(cache, FullImageDepth):
                boxes = torch.tensor([sub_box(b, win) for b in batch["box"].tolist()])
                return net(hazy, depth_feats=cache.features(model, {**batch, "box": boxes}))
            return net(hazy)  # a per-image cache holds whole samples, not windows: the teacher runs live
        if getattr(model, "uses_reference_depth", False):
            gt = batch["gt"] if win is None else batch["gt"][..., win[0]:win[0] + win[2], win[1]:win[1] + win[3]]
            return net(hazy, depth_feats=model.depth_features(hazy, reference=gt))
        return net(hazy)

    def step(net: nn.Module, batch: Dict[str, Any]):  # type: ignore[no-untyped-def]
        hazy, gt = batch["hazy"], batch["gt"]
        pred = forward(net, batch, hazy)
        total, terms = loss_fn(pred, gt)
        if stability is not None:
            term = stability(lambda copy, win: forward(net, batch, copy, win), hazy, pred)
            total = total + stability.weight * term
            terms["stability"] = float(term.detach())
        return total, terms

    return step


def make_validate_fn(val_set: Any):  # type: ignore[no-untyped-def]
    """PSNR / SSIM / PSNR-Y (``edgehaze.metrics``) over full-size validation pairs."""
    from edgehaze.metrics import psnr_torch, psnr_y, ssim_torch

    def validate(model: nn.Module) -> Dict[str, float]:
        device = next(model.parameters()).device
        sums = {"psnr": 0.0, "ssim": 0.0, "psnr_y": 0.0}
        for i in range(len(val_set)):
            sample = val_set[i]
            hazy = sample["hazy"][None].to(device)
            gt = sample["gt"][None].to(device)
            pred = model(hazy).float().clamp(0, 1)
            sums["psnr"] += float(psnr_torch(pred, gt)[0])
            sums["ssim"] += float(ssim_torch(pred, gt)[0])
            sums["psnr_y"] += float(
                psnr_y(pred[0].permute(1, 2, 0).cpu().numpy(), gt[0].permute(1, 2, 0).cpu().numpy())
            )
        return {k: v / max(1, len(val_set)) for k, v in sums.items()}

    return validate


# ---------------------------------------------------------------- models per stage
def build_rgb_model(cfg: TrainConfig) -> nn.Module:
    """Stage 1: the bare backbone, from official weights or ``rgb.init``."""
    from edgehaze.models.dehazer import build_dehazer

    m = cfg.model
    model = build_dehazer(
        backbone=m.backbone, depth=None, backbone_kwargs=m.backbone_kwargs, backbone_weights=m.backbone_weights
    )
    if cfg.rgb.init:
        load_stage1_weights(model, stage1_state_from_checkpoint(cfg.rgb.init, cfg), cfg.rgb.init)
    return model


def build_fused_model(cfg: TrainConfig, stage1: Optional[Dict[str, torch.Tensor]], source: str) -> nn.Module:
    """Stage 2: backbone + frozen teacher + fusion, backbone from stage 1."""
    from edgehaze.models.dehazer import build_dehazer

    m = cfg.model
    model = build_dehazer(
        backbone=m.backbone,
        depth=m.depth,
        depth_weights=m.depth_weights,
        fusion=m.fusion,
        points=m.points,
        backbone_kwargs=m.backbone_kwargs,
        depth_kwargs=m.depth_kwargs,
        depth_image_size=m.depth_image_size,
    )
    if stage1 is not None:
        load_stage1_weights(model, stage1, source)
    return model


def _stage1_for_fused(cfg: TrainConfig, previous: Optional[StageResult]) -> tuple[Dict[str, torch.Tensor], str]:
    if previous is not None:
        path = previous.best_path or previous.last_path
        return stage1_state_from_checkpoint(str(path), cfg), str(path)
    if cfg.fused.init:
        return stage1_state_from_checkpoint(cfg.fused.init, cfg), cfg.fused.init
    if cfg.model.backbone_weights:
        return build_rgb_model(cfg).state_dict(), cfg.model.backbone_weights
    raise ConfigError(
        "the fused stage needs stage-1 weights: run stages [rgb, fused], or set fused.init=CHECKPOINT "
        "(an edgehaze bare-backbone checkpoint) or model.backbone_weights=FILE (official weights)"
    )


# ---------------------------------------------------------------- the command
def _check_fresh(run_dir: Path) -> None:
    states = sorted(run_dir.glob("*/last.state.pt"))
    if states:
        raise ConfigError(
            f"{run_dir} already holds a run ({states[0]}); continue it with --resume auto "
            "(or --resume {run_dir}), or pick a new name=/out_dir="
        )


def run_training(cfg: TrainConfig, resume: bool = False) -> Dict[str, StageResult]:
    """Run the configured stages; returns each stage's result. Works under torchrun."""
    ctx = init_distributed(cfg.train.device)
    try:
        return _run(cfg, resume, ctx)
    finally:
        cleanup(ctx)


def _run(cfg: TrainConfig, resume: bool, ctx: DistContext) -> Dict[str, StageResult]:
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    run_dir = cfg.run_dir()
    if ctx.is_main:
        if not resume:
            _check_fresh(run_dir)
        ensure_data(cfg.data)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir / "config.yaml", cfg)
        if ctx.enabled:
            print(f"edgehaze train: {ctx.world_size} processes ({ctx.backend}), run dir {run_dir}")
    barrier(ctx)
    full_image_depth = cfg.train.depth_scale == "full_image" and "fused" in cfg.stages
    if full_image_depth:
        from edgehaze.train.depth_crop import CropWithBox

        whole = build_train_set(replace(cfg.data, crop=None, flip=False), cfg.seed)
        train_set = CropWithBox(whole, cfg.data.crop, cfg.data.flip, cfg.seed)
    else:
        train_set = build_train_set(cfg.data, cfg.seed)
    val_set = build_val_set(cfg.data)
    validate_fn = make_validate_fn(val_set) if val_set is not None else None
    loss_fn = RestorationLoss(cfg.loss.l1, cfg.loss.ssim, cfg.loss.fft)
    record = {"experiment": cfg.name, "trained_on": str(cfg.data.root), "config": to_dict(cfg)}
    results: Dict[str, StageResult] = {}
    previous: Optional[StageResult] = None
    for index, stage in enumerate(cfg.stages):
        seed_everything(cfg.seed + 1000 * index)  # each stage's init is independent of how we got here
        # The control runs on the fused stage's budget and schedule (same steps, lr, scheduler).
        stage_cfg = cfg.fused if stage == "control" else getattr(cfg, stage)
        cache = None
        if stage == "rgb":
            model = build_rgb_model(cfg)
            params = [p for p in model.parameters() if p.requires_grad]
        elif stage == "control":
            model = build_control_model(cfg, results.get("rgb"))
            params = [p for p in model.parameters() if p.requires_grad]
        else:
            stage1, source = _stage1_for_fused(cfg, results.get("rgb", previous))
            model = build_fused_model(cfg, stage1, source)
            if stage_cfg.z1_init_std > 0:
                init_z1(model, stage_cfg.z1_init_std, cfg.seed)
            params = configure_finetune(model, stage_cfg.finetune)
            if stage_cfg.fusion_lr_scale != 1.0:
                params = fusion_param_groups(model, params, stage_cfg.fusion_lr_scale)
            frozen = model.depth is not None and not model.depth.trainable
            if cfg.train.depth_cache and frozen:
                cache = DepthFeatureCache(run_dir / "depth_cache", model.depth, train_set, mode=model.fusion_mode)
            if full_image_depth and frozen:
                cache = FullImageDepth(train_set, cache)
        trainer = Trainer(
            model=model,
            step_fn=make_step_fn(loss_fn, cache, stability_term(cfg.loss)),
            train_set=train_set,
            stage=stage,
            stage_dir=run_dir / stage,
            train=cfg.train,
            schedule=stage_cfg,
            ctx=ctx,
            seed=cfg.seed,
            workers=cfg.data.workers,
            params=params,
            validate_fn=validate_fn,
            set_train_mode=train_mode_keeping_frozen_norms,
            log_dir=run_dir,
            record={**record, "finetune": stage_cfg.finetune if stage == "fused" else None},
            grad_probe=(lambda m=model: zero_conv_grad_norms(m)) if stage == "fused" else None,
        )
        result = trainer.fit(resume=resume)
        results[stage] = result
        previous = result
        if ctx.is_main:
            best = f", best {cfg.train.metric} {result.best_metric:.3f} -> {result.best_path}" if result.best_metric is not None else ""
            chosen = f" (chosen on validation split {cfg.data.val_split!r})" if result.best_metric is not None else ""
            print(f"edgehaze train: stage {stage} done at step {result.steps}{best}{chosen}; last -> {result.last_path}")
    if ctx.is_main and "fused" in results and "control" in results:
        gain = fused_minus_control(results["fused"], results["control"])
        if gain is not None:
            print(f"edgehaze train: fused minus control (best {cfg.train.metric} on validation, equal budget): {gain:+.3f}")
    return results


def zero_conv_grad_norms(model: nn.Module) -> Dict[str, float]:
    """L2 norms of the gradients reaching the fusion blocks' Z1 and Z2 (all blocks together).

    Why the branch stays shut (issue 16, item 6): at the exact start Z2 = 0,
    so Z1 and the fusion module get no gradient at all until Z2 moves; these
    norms over training show how fast it opens.
    """
    out: Dict[str, float] = {}
    for part in ("z1", "z2"):
        sq = 0.0
        for block in model.fused_blocks():
            for p in getattr(block, part).parameters():
                if p.grad is not None:
                    sq += float(p.grad.detach().float().pow(2).sum())
        out[f"grad_{part}"] = sq ** 0.5
    return out


def init_z1(model: nn.Module, std: float, seed: int) -> None:
    """A small non-zero Z1 (Z2 stays zero, so the output still starts equal to stage 1)."""
    gen = torch.Generator().manual_seed(seed)
    for block in model.fused_blocks():
        for p in block.z1.parameters():
            if p.dim() > 1:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)


def fused_minus_control(fused: StageResult, control: StageResult) -> Optional[float]:
    """What depth adds at an equal budget: best validation metric, fused minus control."""
    if fused.best_metric is None or control.best_metric is None:
        return None
    return float(fused.best_metric) - float(control.best_metric)


def build_control_model(cfg: TrainConfig, rgb: Optional[StageResult]) -> nn.Module:
    """The RGB-only control: the same stage-1 pick the fused stage starts from, no depth."""
    from edgehaze.models.dehazer import build_dehazer

    stage1, source = _stage1_for_fused(cfg, rgb)
    m = cfg.model
    model = build_dehazer(backbone=m.backbone, depth=None, backbone_kwargs=m.backbone_kwargs)
    load_stage1_weights(model, stage1, source)
    return model


def find_resumable(run_dir: Path) -> bool:
    return any(Path(run_dir).glob("*/last.state.pt"))


__all__ = [
    "DepthFeatureCache",
    "build_fused_model",
    "build_rgb_model",
    "configure_finetune",
    "fused_state_from_stage1",
    "load_stage1_weights",
    "make_step_fn",
    "make_validate_fn",
    "run_training",
    "train_mode_keeping_frozen_norms",
]
