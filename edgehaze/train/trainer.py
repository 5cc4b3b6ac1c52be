"""A generic training loop: any model, any loss, one stage at a time.

:class:`Trainer` knows nothing about dehazing. It owns what every stage of
every recipe needs: AdamW, the LR schedule, gradient accumulation and
clipping, AMP (bf16, or fp16 with a GradScaler, on CUDA), an optional EMA,
DistributedDataParallel, deterministic resumable data order, validation,
atomic checkpoints, ``--resume``, a tqdm bar and CSV/TensorBoard logs.

Reuse points (``edgehaze distill`` plugs in here):

* ``step_fn(net, batch) -> (loss, terms)``: the forward + loss of one
  micro-batch. ``net`` is the model, DDP-wrapped when distributed (call it
  for the forward so gradients synchronise); ``batch`` is the dataset's
  sample dict collated and moved to the device (plus ``index``). ``loss`` is
  a scalar tensor; ``terms`` maps names to floats for the logs.
* ``params``: what the optimiser updates (default: every parameter with
  ``requires_grad``). Freeze by setting ``requires_grad`` before building.
  Parameter groups are dicts ``{"params": [...], "lr_scale": s}``: each
  group trains at ``s`` times the stage's learning rate (the schedule
  scales every group alike).
* ``validate_fn(model) -> {metric: value}``: run on rank 0, in eval mode,
  under ``no_grad``, with EMA weights swapped in when EMA is on. The metric
  named by ``train.metric`` picks the best checkpoint (higher is better).
* ``save_model_fn(path, model, extra)`` / ``load_model_fn(path, model)``:
  the user-facing weight files (default: :func:`edgehaze.checkpoint.save_dehazer`).
* ``set_train_mode(model)``: put the model in training mode (default
  ``model.train()``; the teacher recipe keeps frozen BatchNorms in eval).
* ``extra_state()`` / ``load_extra_state(dict)``: more resumable state
  (weights_only-safe values only).

Files in ``stage_dir``: ``last.safetensors`` and ``best.safetensors`` (the
model), ``last.state.pt`` (everything resume needs, the model weights
included, so one atomic file is always self-consistent). Logs go to
``log_dir`` (``train_log.csv``, ``val_log.csv``).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from edgehaze.errors import CheckpointError, EdgehazeError
from edgehaze.train.config import StageConfig, TrainSection
from edgehaze.train.data import EpochAwareDataset, ResumableSampler, batches_per_epoch, make_loader, to_device
from edgehaze.train.ddp import DistContext, all_reduce_mean, barrier, unwrap, wrap_model
from edgehaze.train.logs import CsvLog, tensorboard_writer
from edgehaze.train.state import EMA, load_state, optional_state, rng_state, save_state, set_rng_state

StepFn = Callable[[nn.Module, Dict[str, Any]], Tuple[torch.Tensor, Dict[str, float]]]
ValidateFn = Callable[[nn.Module], Dict[str, float]]


def model_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The weights a checkpoint keeps (no frozen-teacher weights)."""
    fn = getattr(model, "persistent_state_dict", None)
    sd = fn() if callable(fn) else model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def load_model_state(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (from :func:`model_state`) strictly on the persistent keys."""
    expected = set(model_state(model))
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(state, strict=False)


def save_dehazer_file(path: Path, model: nn.Module, extra: Dict[str, Any]) -> None:
    from edgehaze.checkpoint import save_dehazer

    depth = getattr(model, "depth", None)
    weights = None if depth is None else depth.build_kwargs().get("weights")
    save_dehazer(path, model, depth_weights=weights, extra=extra)


def load_dehazer_file(path: Path, model: nn.Module) -> None:
    from safetensors.torch import load_file

    load_model_state(model, load_file(str(path)), str(path))


def param_groups(params: List[Any], lr: float) -> List[Dict[str, Any]]:
    """Trainable parameter groups from parameters or ``{"params", "lr_scale"}`` dicts."""
    raw = list(params)
    groups = raw if raw and isinstance(raw[0], dict) else [{"params": raw}]
    out = []
    for g in groups:
        ps = [p for p in g["params"] if p.requires_grad]
        if ps:
            out.append({"params": ps, "lr": lr * float(g.get("lr_scale", 1.0))})
    return out


def make_optimizer(groups: List[Dict[str, Any]], lr: float, cfg: TrainSection) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), as DehazeFormer and the paper train."""
    if not groups:
        raise EdgehazeError("nothing to train: every parameter is frozen (check the stage's finetune mode)")
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, stage: StageConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The stage's LR schedule, stepped once per optimiser step."""
    if stage.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=stage.steps, eta_min=stage.eta_min)
    if stage.scheduler == "cosine_restarts":
        t0 = stage.restart_every or stage.steps
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=t0, T_mult=stage.restart_mult, eta_min=stage.eta_min
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype for ``train.amp`` on ``device`` (None = full precision)."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise EdgehazeError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
    return torch.bfloat16 if mode == "bf16" else torch.float16


@dataclass
class StageResult:
    """What a finished stage left behind."""

    stage: str
    steps: int
    best_metric: Optional[float]
    best_path: Optional[Path]
    last_path: Path
    stage_dir: Path


class Trainer:
    """Train ``model`` for one stage (see the module docstring for the hooks)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        step_fn: StepFn,
        train_set: Any,
        stage: str,
        stage_dir: Path,
        train: TrainSection,
        schedule: StageConfig,
        ctx: DistContext,
        seed: int = 0,
        workers: int = 0,
        params: Optional[List[nn.Parameter]] = None,
        validate_fn: Optional[ValidateFn] = None,
        save_model_fn: Callable[[Path, nn.Module, Dict[str, Any]], None] = save_dehazer_file,
        set_train_mode: Optional[Callable[[nn.Module], None]] = None,
        log_dir: Optional[Path] = None,
        extra_state: Optional[Callable[[], Dict[str, Any]]] = None,
        load_extra_state: Optional[Callable[[Dict[str, Any]], None]] = None,
        record: Optional[Dict[str, Any]] = None,
        grad_probe: Optional[Callable[[], Dict[str, float]]] = None,
    ) -> None:
        #: called after each step's backward, before the update: named gradient
        #: norms (e.g. the fusion zero-convs) that go into train_log.csv
        self.grad_probe = grad_probe
        self.model = model.to(ctx.device)
        self.step_fn = step_fn
        self.stage = stage
        self.stage_dir = Path(stage_dir)
        self.cfg = train
        self.schedule = schedule
        self.ctx = ctx
        self.seed = seed
        self.validate_fn = validate_fn
        self.save_model_fn = save_model_fn
        self.set_train_mode = set_train_mode or (lambda m: m.train())
        self.extra_state = extra_state
        self.load_extra_state = load_extra_state
        self.record = dict(record or {})
        self.log_dir = Path(log_dir) if log_dir is not None else self.stage_dir

        lr = schedule.lr if schedule.lr is not None else train.lr
        groups = param_groups(params if params is not None else model.parameters(), lr)
        self.params = [p for g in groups for p in g["params"]]
        self.opt = make_optimizer(groups, lr, train)
        self.sched = make_scheduler(self.opt, schedule)
        self.amp_dtype = resolve_amp(train.amp, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(self.model, train.ema) if train.ema > 0 else None
        self.net = wrap_model(self.model, ctx, train.find_unused_parameters)

        self.dataset = EpochAwareDataset(train_set)
        self.per_epoch = batches_per_epoch(len(self.dataset), train.batch_size, ctx.world_size)
        if self.per_epoch == 0:
            raise EdgehazeError(
                f"the training set has {len(self.dataset)} pairs, fewer than one batch "
                f"(train.batch_size={train.batch_size} x {ctx.world_size} process(es)); lower train.batch_size"
            )
        self.sampler = ResumableSampler(self.dataset, ctx.world_size, ctx.rank, seed=seed, shuffle=True)
        self.loader = make_loader(self.dataset, self.sampler, train.batch_size, workers, ctx.device)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_metric: Optional[float] = None
        self.elapsed = 0.0
        self.finished = False
        self._iter: Optional[Any] = None

    # ------------------------------------------------------------ paths
    @property
    def last_path(self) -> Path:
        return self.stage_dir / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.stage_dir / "best.safetensors"

    @property
    def state_path(self) -> Path:
        return self.stage_dir / "last.state.pt"

    # ------------------------------------------------------------ data
    def _next_batch(self) -> Dict[str, Any]:
        while True:
            if self._iter is None:
                self.sampler.set_position(self.epoch, self.batch_in_epoch * self.cfg.batch_size)
                self.dataset.set_epoch(self.epoch)
                self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            self.batch_in_epoch += 1
            return to_device(batch, self.ctx.device)

    # ------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "stage": self.stage,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_metric": self.best_metric,
            "elapsed": self.elapsed,
            "finished": self.finished,
            "world_size": self.ctx.world_size,
            "model": model_state(self.model),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": optional_state(self.ema),
            "rng": rng_state(),
            "extra": self.extra_state() if self.extra_state else {},
        }

    def load_state_dict(self, state: Dict[str, Any], source: str) -> None:
        if state.get("stage") != self.stage:
            raise CheckpointError(f"{source}: state of stage {state.get('stage')!r}, expected {self.stage!r}")
        if int(state.get("world_size", 1)) != self.ctx.world_size:
            raise CheckpointError(
                f"{source}: saved by {state.get('world_size')} process(es), resumed with {self.ctx.world_size}; "
                "resume with the same --nproc_per_node (the data order depends on it)"
            )
        load_model_state(self.model, state["model"], source)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if not state.get("ema"):
                raise CheckpointError(f"{source}: train.ema is on but the run was saved without EMA")
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_metric = state.get("best_metric")
        self.elapsed = float(state.get("elapsed", 0.0))
        self.finished = bool(state.get("finished", False))
        if self.load_extra_state and state.get("extra"):
            self.load_extra_state(state["extra"])
        set_rng_state(state["rng"])

    def try_resume(self) -> bool:
        """Continue from ``last.state.pt`` if this stage has one; True if resumed."""
        if not self.state_path.is_file():
            return False
        self.load_state_dict(load_state(self.state_path), str(self.state_path))
        if self.best_path.is_file() and self.best_metric is not None:
            # a crash between writing best.safetensors and the state leaves the file newer
            from edgehaze.checkpoint import read_metadata

            try:
                on_disk = read_metadata(self.best_path).get("extra", {}).get("metric_value")
                if on_disk is not None:
                    self.best_metric = max(self.best_metric, float(on_disk))
            except EdgehazeError:
                pass
        if self.ctx.is_main:
            self._trim_logs()
        return True

    def _trim_logs(self) -> None:
        for name in ("train_log.csv", "val_log.csv"):
            log = CsvLog(self.log_dir / name)
            log.keep_only(lambda r: r.get("stage") != self.stage or int(r.get("step", 0)) <= self.step)

    # ------------------------------------------------------------ one step
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def train_step(self) -> Dict[str, float]:
        """One optimiser step over ``accumulate`` micro-batches; returns the logs."""
        accum = self.cfg.accumulate
        self.opt.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        for k in range(accum):
            batch = self._next_batch()
            last = k == accum - 1
            sync = contextlib.nullcontext() if (last or not self.ctx.enabled) else self.net.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    loss, terms = self.step_fn(self.net, batch)
                if not torch.isfinite(loss.detach()):
                    raise EdgehazeError(
                        f"{self.stage} stage: the loss became {float(loss)} at step {self.step + 1}; "
                        "lower the learning rate, set train.grad_clip, or train.amp=off"
                    )
                self.scaler.scale(loss / accum).backward()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / accum
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + float(v) / accum
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        if self.grad_probe is not None:
            scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() and not self.cfg.grad_clip > 0 else 1.0
            sums.update({k: v / scale for k, v in self.grad_probe().items()})
        sums["lr"] = float(self.opt.param_groups[0]["lr"])
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return sums

    # ------------------------------------------------------------ validation / saving
    def validate(self) -> Optional[Dict[str, float]]:
        if self.validate_fn is None or not self.ctx.is_main:
            return None
        self.model.eval()
        try:
            with torch.no_grad():
                if self.ema is not None:
                    with self.ema.swapped_in(self.model):
                        return self.validate_fn(self.model)
                return self.validate_fn(self.model)
        finally:
            self.set_train_mode(self.model)

    def save(self, metrics: Optional[Dict[str, float]]) -> None:
        """Checkpoint (rank 0), with every rank waiting at barriers around it."""
        barrier(self.ctx)
        if self.ctx.is_main:
            extra = {**self.record, "stage": self.stage, "step": self.step}
            if metrics is not None:
                value = float(metrics[self.cfg.metric])
                if self.best_metric is None or value > self.best_metric:
                    self.best_metric = value
                    best_extra = {**extra, "metrics": metrics, "metric": self.cfg.metric, "metric_value": value}
                    if self.ema is not None:
                        with self.ema.swapped_in(self.model):
                            self.save_model_fn(self.best_path, self.model, {**best_extra, "ema": True})
                    else:
                        self.save_model_fn(self.best_path, self.model, best_extra)
            self.save_model_fn(self.last_path, self.model, extra)
            save_state(self.state_path, self.state_dict())
        barrier(self.ctx)

    # ------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> StageResult:
        """Train until ``schedule.steps``; resumes from ``last.state.pt`` if asked."""
        if resume:
            self.try_resume()
        if self.finished:
            return self._result()
        main = self.ctx.is_main
        train_log = CsvLog(self.log_dir / "train_log.csv") if main else None
        val_log = CsvLog(self.log_dir / "val_log.csv") if main else None
        tb = tensorboard_writer(self.log_dir / "tensorboard") if main else None
        from tqdm import tqdm

        bar = tqdm(
            total=self.schedule.steps,
            initial=self.step,
            desc=f"train {self.stage}",
            unit="step",
            disable=not (main and self.cfg.progress),
            dynamic_ncols=True,
        )
        ckpt_every = self.cfg.ckpt_every or self.cfg.val_every
        self.set_train_mode(self.model)
        window: Dict[str, float] = {}
        window_n = 0
        start = time.perf_counter() - self.elapsed
        try:
            while self.step < self.schedule.steps:
                logs = self.train_step()
                for k, v in logs.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                bar.update(1)
                end = self.step == self.schedule.steps
                if self.step % self.cfg.log_every == 0 or end:
                    mean = {k: v / window_n for k, v in window.items()}
                    mean = all_reduce_mean(self.ctx, mean)
                    window, window_n = {}, 0
                    self.elapsed = time.perf_counter() - start
                    if main:
                        row = {"stage": self.stage, "step": self.step, "epoch": self.epoch}
                        row.update(mean)
                        row["time"] = round(self.elapsed, 3)
                        train_log.append(row)  # type: ignore[union-attr]
                        bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{mean['lr']:.2e}")
                        if tb is not None:
                            for k, v in mean.items():
                                tb.add_scalar(f"{self.stage}/{k}", v, self.step)
                metrics = None
                val_step = self.step % self.cfg.val_every == 0 or end
                if val_step:
                    metrics = self.validate()
                    if metrics is not None and main:
                        val_log.append({"stage": self.stage, "step": self.step, **metrics})  # type: ignore[union-attr]
                        bar.write(
                            f"[{self.stage} step {self.step}] "
                            + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                        )
                        if tb is not None:
                            for k, v in metrics.items():
                                tb.add_scalar(f"{self.stage}/val_{k}", v, self.step)
                if end:
                    self.finished = True
                self.elapsed = time.perf_counter() - start
                if val_step or self.step % ckpt_every == 0:
                    self.save(metrics)
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        self.check_replicas()
        return self._result()

    def check_replicas(self) -> None:
        """Under DDP, verify every rank ends with the same weights (cheap checksum)."""
        if not self.ctx.enabled:
            return
        import torch.distributed as dist

        local = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for i, p in enumerate(self.model.parameters()):
            local[0] += p.detach().double().sum()
            local[1] += (p.detach().double().abs() * (1 + i % 7)).sum()
        gathered = [torch.zeros_like(local) for _ in range(self.ctx.world_size)]
        dist.all_gather(gathered, local)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"{self.stage} stage: parameters differ across ranks: {[g.tolist() for g in gathered]}")
        if self.ctx.is_main:
            print(f"edgehaze train: {self.stage} parameters identical on {self.ctx.world_size} ranks")

    def _result(self) -> StageResult:
        best = self.best_path if self.best_path.is_file() else None
        return StageResult(self.stage, self.step, self.best_metric, best, self.last_path, self.stage_dir)
