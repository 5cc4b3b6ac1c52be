"""Feature distillation: teacher dehazer (DAv2-fused) -> student dehazer.

The teacher is a trained dehazer fused with a frozen Depth Anything V2
network. The student is the *same* backbone and fusion blocks, copied from
the teacher, with a small student encoder (:mod:`edgehaze.distill.students`)
in the ViT's place. What the student must reproduce is what the backbone
sees: the output of every fusion block (``y = F(x) + Z2(RDF(F(x), Z1(c)))``,
method.md section 7), not the depth map itself, so the student only has to
learn the part of the depth signal the dehazer uses.

Loss (weights in the config, 0 switches a term off)::

    L = sum_p w_p * d(fused_s[p], fused_t[p])      # d = L1 or MSE, per fusion point p
      + w_out * L1(student(x), teacher(x))         # output distillation
      + w_gt  * L1(student(x), gt)                 # ground truth

Z1 (the 1x1 conv taking the depth channels into each fusion block) changes
input width with the encoder, so it cannot be copied. It is *not*
zero-initialised here: a zero Z1 would make the student dehazer start as the
RGB-only backbone, blocking every gradient to the encoder in the first step
and throwing away the teacher's trained fusion. Two inits:

* ``lstsq`` (default): a ridge least-squares fit, per fusion point, of the
  teacher's Z1 output from the (freshly initialised) student features on a
  few training batches: the best linear map from what the student gives now
  to what the fusion block expects, so training starts from the teacher's
  operating point as far as a linear map allows.
* ``normal``: ``N(0, 1/C_in)`` weights (variance-preserving), zero bias.

Freezing: ``backbone_and_fusion`` trains the encoder and the Z1 adapters only
(the rest stays in eval mode, so BatchNorm statistics do not drift);
``none`` fine-tunes everything, the copied backbone/fusion at
``lr * lr_scale``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.errors import CheckpointError, ConfigError, EdgehazeError
from edgehaze.train.config import (
    DataConfig,
    TrainSection,
    _check_choice,
    _positive,
    check_stability,
    check_validation_not_test,
)

FREEZE_MODES = ("backbone_and_fusion", "none")
FEATURE_LOSSES = ("l1", "mse")
Z1_INITS = ("lstsq", "normal")


# ---------------------------------------------------------------- config schema
@dataclass
class TeacherConfig:
    """The teacher dehazer.

    checkpoint: a fused training checkpoint (``edgehaze train``); its
        metadata names the depth teacher (CLI ``--teacher-ckpt``).
    depth: the expected teacher id (``dav2-l``; CLI ``--teacher``); checked
        against the checkpoint. None: whatever the checkpoint names.
    depth_weights: the teacher's weight file, overriding the path recorded
        in the checkpoint (CLI ``--depth-weights``).
    stage1: optional RGB-only (stage-1) checkpoint, reported for comparison.
    """

    checkpoint: Optional[str] = None
    depth: Optional[str] = None
    depth_weights: Optional[str] = None
    stage1: Optional[str] = None


@dataclass
class StudentConfig:
    """The student encoder (a ``DEPTH_MODELS`` name) and its Z1 adapters.

    init: a student checkpoint, or a shipped model name (``edgehaze-s``),
    whose depth encoder and Z1 adapters start the student instead of a fresh
    encoder and the Z1 fit: distillation on your own data then continues the
    shipped student (its encoder must have the same architecture).
    """

    depth: str = "student-s"
    depth_kwargs: Dict[str, Any] = field(default_factory=dict)
    z1_init: str = "lstsq"
    z1_fit_batches: int = 4
    init: Optional[str] = None


@dataclass
class DistillLossConfig:
    """Loss weights: fused features (per point), teacher output, ground truth; and the stability term.

    stability / stability_shift / stability_noise: the single-frame
    stability term against flicker on the student's output, as in
    ``edgehaze train`` (:mod:`edgehaze.train.stability`; 0 = off).
    """

    feature: str = "l1"
    feature_weight: float = 1.0
    point_weights: Optional[List[float]] = None
    output: float = 1.0
    gt: float = 0.5
    stability: float = 0.0
    stability_shift: int = 8
    stability_noise: float = 0.0


@dataclass
class DistillSection:
    """Optimisation of the distillation run.

    lr: learning rate of the encoder and Z1 (``train.lr`` is not used here).
    freeze: ``backbone_and_fusion`` (train the encoder + Z1 only) or ``none``
        (fine-tune all; the copied parts at ``lr * lr_scale``).
    cache_teacher: keep the teacher's fused features and output per image
        (``auto``: when the data has no random crop/flip).
    """

    steps: int = 2000
    lr: float = 1e-3
    eta_min: float = 1e-6
    scheduler: str = "cosine"
    freeze: str = "backbone_and_fusion"
    lr_scale: float = 0.1
    cache_teacher: str = "auto"


@dataclass
class ReportConfig:
    """Report settings: evaluation size (H, W) for FLOPs/latency, latency runs."""

    eval_size: List[int] = field(default_factory=lambda: [480, 640])
    latency_runs: int = 5
    val_limit: Optional[int] = None


@dataclass
class DistillConfig:
    """``edgehaze distill``: a student encoder matching the teacher's fused features."""

    name: str = "distill"
    out_dir: str = "runs/{name}"
    seed: int = 0
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=lambda: TrainSection(weight_decay=0.0, batch_size=8))
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    distill: DistillSection = field(default_factory=DistillSection)
    report: ReportConfig = field(default_factory=ReportConfig)

    def run_dir(self) -> "Path":
        from pathlib import Path

        return Path(self.out_dir.replace("{name}", self.name))

    def validate(self, where: str = "config") -> None:
        _check_choice(self.distill.freeze, FREEZE_MODES, "distill.freeze", where)
        _check_choice(self.distill.scheduler, ("constant", "cosine"), "distill.scheduler", where)
        _check_choice(self.distill.cache_teacher, ("auto", "on", "off"), "distill.cache_teacher", where)
        _check_choice(self.loss.feature, FEATURE_LOSSES, "loss.feature", where)
        _check_choice(self.student.z1_init, Z1_INITS, "student.z1_init", where)
        _positive(self.distill.steps, "distill.steps", where)
        _positive(self.train.batch_size, "train.batch_size", where)
        _positive(self.train.accumulate, "train.accumulate", where)
        _positive(self.train.val_every, "train.val_every", where)
        _positive(self.report.latency_runs, "report.latency_runs", where)
        if len(self.report.eval_size) != 2 or min(self.report.eval_size) < 16:
            raise ConfigError(f"{where}: 'report.eval_size' is [H, W] with sides >= 16, got {self.report.eval_size}")
        if min(self.loss.feature_weight, self.loss.output, self.loss.gt) < 0:
            raise ConfigError(f"{where}: loss weights must be >= 0")
        check_stability(self.loss, self.data.crop, where)
        if self.distill.cache_teacher == "on" and (self.data.crop is not None or self.data.flip):
            raise ConfigError(
                f"{where}: 'distill.cache_teacher: on' keeps one teacher result per image and needs "
                "'data.crop: null' and 'data.flip: false'"
            )
        if self.train.ema or self.train.amp not in ("auto", "off") or self.train.depth_cache:
            raise ConfigError(
                f"{where}: 'train.ema', 'train.amp' (bf16/fp16) and 'train.depth_cache' are not used by "
                "edgehaze distill (it runs in fp32; the teacher cache is 'distill.cache_teacher'); remove them"
            )
        if self.data.root is None:
            raise ConfigError(f"{where}: 'data.root' is not set; pass --data DIR (or data.root=DIR)")
        # validation picks best.safetensors: it must never read the test split the report scores
        check_validation_not_test(self.data, where)

    def cache_enabled(self) -> bool:
        mode = self.distill.cache_teacher
        return mode == "on" or (mode == "auto" and self.data.crop is None and not self.data.flip)


# ---------------------------------------------------------------- teacher and student
def check_teacher_weights(checkpoint: Optional[str], teacher: Optional[str] = None,
                          depth_weights: Optional[str] = None) -> Optional[str]:
    """Fail early (MissingWeightsError naming ``--depth-weights``) when a real
    teacher has no weights given nor recorded; returns the teacher id.

    Cheap: reads the checkpoint's header only and never loads a ViT.
    """
    from edgehaze.checkpoint import read_metadata
    from edgehaze.models.dehazer import build_depth

    if checkpoint is None:
        if teacher is None:
            raise ConfigError("no teacher: pass --teacher-ckpt CKPT (a fused checkpoint from `edgehaze train`)")
        if depth_weights is None and teacher != "tiny":
            build_depth(teacher)  # raises MissingWeightsError naming --depth-weights
        return teacher
    build = read_metadata(checkpoint).get("build", {})
    depth = build.get("depth")
    if depth is None:
        raise CheckpointError(
            f"{checkpoint}: an RGB-only checkpoint (no depth model); the teacher must be a fused "
            "checkpoint (pass the stage-1 checkpoint as teacher.stage1 for the report instead)"
        )
    if teacher is not None and depth != teacher:
        raise ConfigError(f"{checkpoint}: was trained with depth model '{depth}', not '{teacher}' (--teacher)")
    if depth_weights is None and build.get("depth_weights") is None and depth != "tiny":
        build_depth(depth)  # MissingWeightsError for a real teacher
    return depth


def load_teacher(
    checkpoint: Optional[str],
    teacher: Optional[str] = None,
    depth_weights: Optional[str] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """The teacher dehazer from a fused training checkpoint, in eval mode, frozen.

    Raises :class:`MissingWeightsError` (naming ``--depth-weights``) when the
    teacher's weights are neither given nor recorded, before anything large
    is loaded.
    """
    from edgehaze.checkpoint import load_dehazer

    depth = check_teacher_weights(checkpoint, teacher, depth_weights)
    if checkpoint is None:
        raise ConfigError(
            f"teacher '{teacher}' needs the trained dehazer it is fused into: pass --teacher-ckpt CKPT "
            "(the fused stage's checkpoint from `edgehaze train`)"
        )
    model, meta = load_dehazer(checkpoint, depth_weights=depth_weights)
    if model.depth is None or model.depth.trainable:
        raise CheckpointError(
            f"{checkpoint}: its depth model '{depth}' is not a frozen teacher; distil from a checkpoint "
            "fused with a Depth Anything teacher"
        )
    model.requires_grad_(False)
    model.eval()
    return model, meta


def teacher_identity(teacher: nn.Module) -> Dict[str, Any]:
    """Id and licence of the teacher's depth model (the student is a derivative)."""
    from edgehaze.checkpoint import provenance_of

    prov = provenance_of(teacher)
    return {"id": prov["teacher"], "license": prov["license"]}


def z1_module_names(model: nn.Module) -> List[str]:
    """Dotted names of each fusion block's Z1 (in fusion-point order)."""
    by_id = {id(m): n for n, m in model.named_modules()}
    return [by_id[id(b.z1)] for b in model.fused_blocks()]


def build_student(
    teacher: nn.Module,
    student: str = "student-s",
    student_kwargs: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """The teacher's backbone and fusion with ``student`` in the depth model's place.

    Every backbone and fusion weight is copied from the teacher except Z1
    (its input width is the encoder's); initialise Z1 with :func:`init_z1`.
    """
    from edgehaze.models.dehazer import build_dehazer

    args = teacher.build_args()
    ident = teacher_identity(teacher)
    kwargs = {**(student_kwargs or {}), "teacher_id": ident["id"]}
    model = build_dehazer(
        backbone=args["backbone"],
        backbone_kwargs=args["backbone_kwargs"],
        depth=student,
        depth_kwargs=kwargs,
        fusion=args["fusion"],
        points=args["points"],
        depth_image_size=args.get("depth_image_size"),
    )
    if not model.depth.trainable:
        raise ConfigError(f"student '{student}' is a frozen teacher model; choose a student encoder (student-s, ...)")
    z1 = tuple(n + "." for n in z1_module_names(model))
    source = {k: v for k, v in teacher.persistent_state_dict().items()
              if not k.startswith("depth.") and not k.startswith(z1)}
    missing, unexpected = model.load_state_dict(source, strict=False)
    left = [k for k in missing if not k.startswith("depth.") and not k.startswith(z1)]
    if left or unexpected:
        raise CheckpointError(f"teacher and student differ beyond the encoder (missing {left[:3]}, unexpected {unexpected[:3]})")
    return model


def init_student_from(student: nn.Module, spec: str) -> str:
    """Load the depth encoder and Z1 adapters of checkpoint ``spec`` (a path or a shipped name) into ``student``.

    Returns the checkpoint path. Every depth/Z1 tensor of ``student`` must be
    there with its shape (else a one-line error naming the checkpoint).
    """
    from safetensors.torch import load_file

    from edgehaze.checkpoint import read_metadata
    from edgehaze.model_zoo import shipped_checkpoint

    path = str(shipped_checkpoint(spec) or spec)
    read_metadata(path)  # a readable edgehaze checkpoint, or a one-line CheckpointError
    z1 = tuple(n + "." for n in z1_module_names(student))
    want = {k: v for k, v in student.persistent_state_dict().items() if k.startswith("depth.") or k.startswith(z1)}
    state = load_file(path)
    bad = sorted(k for k, v in want.items() if k not in state or state[k].shape != v.shape)
    if bad:
        raise CheckpointError(f"student.init={spec}: {path} does not hold this student's encoder (missing or "
                              f"differently shaped: {bad[:3]}); use the same student depth_kwargs")
    student.load_state_dict({k: state[k] for k in want}, strict=False)
    return path


@torch.no_grad()
def init_z1(student: nn.Module, teacher: nn.Module, batches: Iterable[torch.Tensor], method: str = "lstsq",
            max_pixels: int = 65536, ridge: float = 1e-3) -> Dict[str, float]:
    """Initialise each student Z1 (see module docstring); returns the fit's relative error per point.

    ``batches``: hazy image batches (only used by ``lstsq``). A Z1 that is an
    identity (no pre-zero-conv, equal widths) has nothing to fit and is left.
    """
    convs = [b.z1 if isinstance(b.z1, nn.Conv2d) else None for b in student.fused_blocks()]
    if method == "normal":
        for conv in convs:
            if conv is not None:
                nn.init.normal_(conv.weight, std=1.0 / math.sqrt(conv.in_channels))
                nn.init.zeros_(conv.bias) if conv.bias is not None else None
        return {}
    if method != "lstsq":
        raise ConfigError(f"unknown z1_init '{method}'; choose from {list(Z1_INITS)}")
    n = len(convs)
    xtx: List[Optional[torch.Tensor]] = [None] * n
    xty: List[Optional[torch.Tensor]] = [None] * n
    yty = [0.0] * n
    captured: Dict[Tuple[str, int], torch.Tensor] = {}

    def hook(tag: str, i: int):  # type: ignore[no-untyped-def]
        def fn(module, inputs, output):  # type: ignore[no-untyped-def]
            captured[(tag, i)] = inputs[0] if tag == "s" else output
        return fn

    handles = [b.z1.register_forward_hook(hook("t", i)) for i, b in enumerate(teacher.fused_blocks())]
    handles += [b.z1.register_forward_hook(hook("s", i)) for i, b in enumerate(student.fused_blocks())]
    was_training = student.training
    # the copied backbone as the teacher runs it (running BN statistics), the
    # fresh encoder with batch statistics as in training
    student.eval()
    student.depth.train()
    gen = torch.Generator().manual_seed(0)
    try:
        for images in batches:
            captured.clear()
            teacher(images)
            student(images)
            for i, conv in enumerate(convs):
                if conv is None:
                    continue
                x = captured[("s", i)].permute(0, 2, 3, 1).reshape(-1, conv.in_channels).double()
                y = captured[("t", i)].permute(0, 2, 3, 1).reshape(-1, conv.out_channels).double()
                if x.shape[0] > max_pixels:
                    idx = torch.randperm(x.shape[0], generator=gen)[:max_pixels]
                    x, y = x[idx], y[idx]
                x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
                xtx[i] = x.T @ x if xtx[i] is None else xtx[i] + x.T @ x
                xty[i] = x.T @ y if xty[i] is None else xty[i] + x.T @ y
                yty[i] += float((y * y).sum())
    finally:
        for h in handles:
            h.remove()
        student.train(was_training)
    errors: Dict[str, float] = {}
    for i, conv in enumerate(convs):
        if conv is None or xtx[i] is None:
            continue
        a = xtx[i]
        lam = ridge * float(torch.diagonal(a).mean()) + 1e-12
        w = torch.linalg.solve(a + lam * torch.eye(a.shape[0], dtype=a.dtype), xty[i])  # (cin+1) x cout
        conv.weight.copy_(w[:-1].T.reshape(conv.weight.shape).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.copy_(w[-1].to(conv.bias.dtype))
        else:  # pragma: no cover - Z1 always has a bias
            pass
        resid = yty[i] - float((w * xty[i]).sum())  # ||y - xw||^2 at the ridge solution (approx.)
        errors[student.points[i].name] = max(resid, 0.0) / max(yty[i], 1e-12)
    return errors


# ---------------------------------------------------------------- freezing
def apply_freeze(model: nn.Module, mode: str, lr: float, lr_scale: float = 0.1) -> List[Dict[str, Any]]:
    """Set ``requires_grad`` for ``mode`` and return the optimiser's parameter groups.

    ``backbone_and_fusion``: only the encoder and the Z1 adapters train.
    ``none``: all train; everything but encoder and Z1 at ``lr * lr_scale``.
    """
    _check_choice(mode, FREEZE_MODES, "distill.freeze", "distill")
    own = list(model.depth.parameters()) + [p for b in model.fused_blocks() for p in b.z1.parameters()]
    own_ids = {id(p) for p in own}
    rest = [p for p in model.parameters() if id(p) not in own_ids]
    model.requires_grad_(mode == "none")
    for p in own:
        p.requires_grad_(True)
    groups = [{"params": own, "lr": lr, "name": "encoder+z1"}]
    if mode == "none":
        groups.append({"params": rest, "lr": lr * lr_scale, "name": "backbone+fusion"})
    return groups


def set_train_mode(model: nn.Module, mode: str) -> None:
    """``model.train()``, except frozen parts stay in eval mode (BN statistics fixed)."""
    model.train()
    if mode == "backbone_and_fusion":
        model.backbone.eval()  # holds the fusion blocks too
        for b in model.fused_blocks():
            b.z1.train()


# ---------------------------------------------------------------- loss
class DistillLoss(nn.Module):
    """Fused-feature + output + ground-truth distillation loss (module docstring)."""

    def __init__(self, feature: str = "l1", feature_weight: float = 1.0,
                 point_weights: Optional[Sequence[float]] = None, output: float = 1.0, gt: float = 0.5) -> None:
        super().__init__()
        _check_choice(feature, FEATURE_LOSSES, "loss.feature", "distill")
        self.feature = feature
        self.feature_weight = float(feature_weight)
        self.point_weights = None if point_weights is None else [float(w) for w in point_weights]
        self.output = float(output)
        self.gt = float(gt)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(a, b) if self.feature == "l1" else F.mse_loss(a, b)

    def forward(self, s_fused: Sequence[torch.Tensor], t_fused: Sequence[torch.Tensor], s_out: torch.Tensor,
                t_out: torch.Tensor, gt: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        if len(s_fused) != len(t_fused):
            raise ValueError(f"{len(s_fused)} student vs {len(t_fused)} teacher fused outputs")
        weights = self.point_weights or [1.0] * len(s_fused)
        if len(weights) != len(s_fused):
            raise ConfigError(f"loss.point_weights has {len(weights)} entries for {len(s_fused)} fusion points")
        terms: Dict[str, float] = {}
        total = s_out.new_zeros(())
        for i, (s, t, w) in enumerate(zip(s_fused, t_fused, weights)):
            d = self.distance(s, t.to(s.dtype))
            terms[f"feat{i}"] = float(d.detach())
            total = total + self.feature_weight * w * d
        if self.output:
            d = F.l1_loss(s_out, t_out.to(s_out.dtype))
            terms["out"] = float(d.detach())
            total = total + self.output * d
        if self.gt and gt is not None:
            d = F.l1_loss(s_out, gt)
            terms["gt"] = float(d.detach())
            total = total + self.gt * d
        terms["total"] = float(total.detach())
        return total, terms


def fused_forward(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``(output, fused outputs per point)`` of one forward pass."""
    model.set_keep_fused_outputs(True)
    try:
        out = model(images)
        fused = model.fused_outputs()
    finally:
        model.set_keep_fused_outputs(False)
    if any(f is None for f in fused):
        raise EdgehazeError("a fusion block did not run; the model has no depth input")
    return out, fused  # type: ignore[return-value]


class TeacherCache:
    """Teacher outputs per image name (valid only without random augmentation)."""

    def __init__(self) -> None:
        self._store: Dict[str, Tuple[torch.Tensor, List[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def __call__(self, teacher: nn.Module, images: torch.Tensor, names: Optional[Sequence[str]]
                 ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        if names is None or any(n not in self._store for n in names):
            out, fused = fused_forward(teacher, images)
            if names is not None:
                for i, n in enumerate(names):
                    self._store[n] = (out[i].cpu(), [f[i].cpu() for f in fused])
            return out, fused
        items = [self._store[n] for n in names]
        out = torch.stack([o for o, _ in items]).to(images.device)
        fused = [torch.stack([fs[k] for _, fs in items]).to(images.device) for k in range(len(items[0][1]))]
        return out, fused
