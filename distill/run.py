"""The distillation run: data, loop, checkpoints, resume, DDP, report.

Built from the training machinery (:mod:`edgehaze.train`): the config
sections, the resumable sampler (data order a function of seed and epoch, so
``--resume`` sees the batches an uninterrupted run would), the training-state
file (``last.state.pt``: optimiser, scheduler, RNG, position), the DDP
helpers (``torchrun ... -m edgehaze distill ...``; rank 0 logs and writes).

Files in the run directory: ``last.safetensors`` + ``last.state.pt`` (every
``train.ckpt_every`` steps, at each validation and at the end),
``best.safetensors`` (best validation PSNR), ``student.safetensors`` (the
final student dehazer), ``config.yaml``, ``log.jsonl``, ``report.json`` and
``report.md``. Every checkpoint is a standalone student dehazer
(``edgehaze.load_dehazer`` needs no teacher and no transformers) whose
provenance names the teacher and whose ``extra`` carries the teacher's id and
licence: the student is a derivative of the teacher's weights.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from edgehaze.distill.distiller import (
    DistillConfig,
    DistillLoss,
    TeacherCache,
    apply_freeze,
    build_student,
    fused_forward,
    init_z1,
    load_teacher,
    set_train_mode,
    teacher_identity,
)
from edgehaze.errors import CheckpointError, ConfigError
from edgehaze.train.stability import stability_term


def _scheduler(opt: torch.optim.Optimizer, cfg: DistillConfig) -> torch.optim.lr_scheduler.LambdaLR:
    steps, floor = cfg.distill.steps, cfg.distill.eta_min
    bases = [g["lr"] for g in opt.param_groups]

    def factor(i: int):  # type: ignore[no-untyped-def]
        def f(step: int) -> float:
            if cfg.distill.scheduler == "constant" or bases[i] == 0:
                return 1.0
            t = min(step, steps) / steps
            lo = min(floor / bases[i], 1.0)
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
        return f

    return torch.optim.lr_scheduler.LambdaLR(opt, [factor(i) for i in range(len(bases))])


def _extra(cfg: DistillConfig, ident: Dict[str, Any], step: int, metrics: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    from edgehaze.train.config import to_dict

    return {
        "kind": "distilled-student",
        "teacher": ident["id"],
        "license": ident["license"],
        "teacher_checkpoint": cfg.teacher.checkpoint,
        "step": step,
        "val": metrics or {},
        "config": to_dict(cfg),
    }


def run_distill(cfg: DistillConfig, resume: bool = False, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Distil ``cfg.student`` from ``cfg.teacher``; returns the report dict (rank 0) or {}."""
    from edgehaze.checkpoint import save_dehazer
    from edgehaze.distill.report import build_report, evaluate, write_report
    from edgehaze.train.config import save_config
    from edgehaze.train.data import (
        EpochAwareDataset, ResumableSampler, batches_per_epoch, build_train_set, build_val_set, ensure_data,
        make_loader, to_device,
    )
    from edgehaze.train.ddp import all_reduce_mean, barrier, cleanup, init_distributed, unwrap, wrap_model
    from edgehaze.train.state import load_state, rng_state, save_state, seed_everything, set_rng_state

    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    show = cfg.train.progress if progress is None else progress
    # the teacher first: a missing weight file fails before any data work
    teacher, _ = load_teacher(cfg.teacher.checkpoint, cfg.teacher.depth, cfg.teacher.depth_weights)
    ident = teacher_identity(teacher)
    ctx = init_distributed(cfg.train.device)
    try:
        seed_everything(cfg.seed + ctx.rank)
        run_dir = cfg.run_dir()
        last, state_path = run_dir / "last.safetensors", run_dir / "last.state.pt"
        if resume and not state_path.is_file():
            raise CheckpointError(f"{state_path}: nothing to resume (run without --resume to start)")
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(run_dir / "config.yaml", cfg)
        ensure_data(cfg.data, ctx.is_main)
        barrier(ctx)
        train_set = build_train_set(cfg.data, cfg.seed)
        val_set = build_val_set(cfg.data, cfg.data.val_limit)
        bs = cfg.train.batch_size
        per_epoch = batches_per_epoch(len(train_set), bs, ctx.world_size)
        if per_epoch < 1:
            raise ConfigError(f"data.root={cfg.data.root}: {len(train_set)} training pair(s) is fewer than one batch "
                              f"of train.batch_size={bs} per process; lower the batch size")
        device = ctx.device
        teacher.to(device)
        student = build_student(teacher, cfg.student.depth, cfg.student.depth_kwargs).to(device)
        student.depth.teacher_license = ident["license"]
        dataset = EpochAwareDataset(train_set)
        sampler = ResumableSampler(dataset, ctx.world_size, ctx.rank, seed=cfg.seed)
        z1_fit: Dict[str, float] = {}
        if resume:
            _load_student(student, last)
        elif cfg.student.init:  # continue a trained student (e.g. the shipped one) instead of fitting Z1 afresh
            from edgehaze.distill.distiller import init_student_from

            sampler.set_position(0, 0)
            init_student_from(student, cfg.student.init)
        else:
            sampler.set_position(0, 0)
            loader = make_loader(dataset, sampler, bs, 0, device)
            fit_batches = (to_device(b, device)["hazy"] for _, b in zip(range(cfg.student.z1_fit_batches), loader))
            z1_fit = init_z1(student, teacher, fit_batches, cfg.student.z1_init)
        lr = cfg.distill.lr
        groups = apply_freeze(student, cfg.distill.freeze, lr, cfg.distill.lr_scale)
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)
        sched = _scheduler(opt, cfg)
        loss_fn = DistillLoss(cfg.loss.feature, cfg.loss.feature_weight, cfg.loss.point_weights, cfg.loss.output, cfg.loss.gt)
        step, best = 0, -math.inf
        if resume:
            st = load_state(state_path)
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            step, best = int(st["step"]), float(st["best"])
            set_rng_state(st["rng"])
        unused = set(range(len(student.depth.feature_channels))) - set(student.levels)
        model = wrap_model(student, ctx, cfg.train.find_unused_parameters or bool(unused))
        cache = TeacherCache() if cfg.cache_enabled() else None
        stability = stability_term(cfg.loss)
        bar = None
        if ctx.is_main and show:
            from tqdm import tqdm

            bar = tqdm(total=cfg.distill.steps, initial=step, desc="distill", unit="step", dynamic_ncols=True)
        log_path = run_dir / "log.jsonl"

        def save(path: Path, metrics: Optional[Dict[str, float]] = None) -> None:
            if ctx.is_main:
                save_dehazer(path, student, extra=_extra(cfg, ident, step, metrics))

        def checkpoint(metrics: Optional[Dict[str, float]] = None) -> None:
            barrier(ctx)
            if ctx.is_main:
                save(last, metrics)
                save_state(state_path, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                        "step": step, "best": best, "rng": rng_state()})
            barrier(ctx)

        acc = cfg.train.accumulate
        while step < cfg.distill.steps:
            epoch, pos = divmod(step * acc, per_epoch)
            sampler.set_position(epoch, pos * bs)
            dataset.set_epoch(epoch)
            loader = make_loader(dataset, sampler, bs, cfg.data.workers, device)
            set_train_mode(student, cfg.distill.freeze)
            micro = 0
            for batch in loader:
                batch = to_device(batch, device)
                images = batch["hazy"]
                t_out, t_fused = cache(teacher, images, batch.get("name")) if cache is not None else _teacher_forward(teacher, images)
                student.set_keep_fused_outputs(True)
                s_out = model(images)
                s_fused = student.fused_outputs()
                student.set_keep_fused_outputs(False)
                loss, terms = loss_fn(s_fused, t_fused, s_out, t_out, batch.get("gt"))
                if stability is not None:  # the student's output must not move with a small shift / noise
                    term = stability(lambda copy, win: model(copy), images, s_out)
                    loss = loss + stability.weight * term
                    terms.update(stability=float(term.detach()), total=float(loss.detach()))
                if not torch.isfinite(loss):
                    raise ConfigError(f"the distillation loss is {float(loss)} at step {step}; lower the learning rate")
                (loss / acc).backward()
                micro += 1
                if micro % acc:
                    continue
                if cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.train.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                step += 1
                terms = all_reduce_mean(ctx, terms)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items() if k in ("total", "feat0", "out")})
                if ctx.is_main and (step % cfg.train.log_every == 0 or step == 1):
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": step, "lr": opt.param_groups[0]["lr"], **terms}) + "\n")
                validate_now = val_set is not None and (step % cfg.train.val_every == 0 or step == cfg.distill.steps)
                if validate_now:
                    metrics = {}
                    if ctx.is_main:
                        ev = evaluate({"student": student}, val_set, teacher=teacher, student=student, device=device)
                        metrics = dict(ev["quality"]["student"])
                        metrics.update({f"feat_l1/{p}": e["l1"] for p, e in ev.get("feature_error", {}).items()})
                        with open(log_path, "a", encoding="utf-8") as fh:
                            fh.write(json.dumps({"step": step, "val": metrics}) + "\n")
                        if metrics["psnr"] > best:
                            best = metrics["psnr"]
                            save(run_dir / "best.safetensors", metrics)
                    set_train_mode(student, cfg.distill.freeze)
                    checkpoint(metrics)
                elif cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0:
                    checkpoint()
                if step >= cfg.distill.steps:
                    break
        if bar is not None:
            bar.close()
        if val_set is None:
            checkpoint()
        report: Dict[str, Any] = {}
        if ctx.is_main:
            final = run_dir / "student.safetensors"
            save(final)
            stage1 = None
            if cfg.teacher.stage1:
                from edgehaze.checkpoint import load_dehazer

                stage1, _ = load_dehazer(cfg.teacher.stage1)
            report = build_report(
                teacher, student, val_set, cfg.report.eval_size, cfg.report.latency_runs, stage1=stage1,
                val_limit=cfg.report.val_limit,
                info={"teacher": ident["id"], "teacher_license": ident["license"], "student": cfg.student.depth,
                      "teacher_checkpoint": cfg.teacher.checkpoint, "student_checkpoint": str(final),
                      "steps": step, "freeze": cfg.distill.freeze, "z1_init": cfg.student.z1_init, "z1_fit_rel_error": z1_fit,
                      "init": cfg.student.init},
            )
            write_report(run_dir, report)
        barrier(ctx)
        return report
    finally:
        cleanup(ctx)


@torch.no_grad()
def _teacher_forward(teacher: torch.nn.Module, images: torch.Tensor):  # type: ignore[no-untyped-def]
    return fused_forward(teacher, images)


def _load_student(student: torch.nn.Module, path: Path) -> None:
    """Load the weights of ``last.safetensors`` into the freshly built student (resume)."""
    from safetensors.torch import load_file

    from edgehaze.checkpoint import read_metadata

    meta = read_metadata(path)
    if meta["build"].get("depth") != student.depth.model_id:
        raise CheckpointError(f"{path}: holds student '{meta['build'].get('depth')}', the config asks for "
                              f"'{student.depth.model_id}'; resume with the run's own config")
    state = load_file(str(path))
    expected = student.persistent_state_dict()
    if set(state) != set(expected):
        raise CheckpointError(f"{path}: weights do not match the student built from the config")
    student.load_state_dict(state, strict=False)
