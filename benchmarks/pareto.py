"""Pareto sweep: quality vs speed over the student's size and internal resolution.

    python benchmarks/pareto.py                      # default sweep, ~equal training budget per point
    python benchmarks/pareto.py --points edge-xs:4 edge-s:4 --steps 20 --out /tmp/p

Each point is a backbone (``edge-xs``/``edge-s``/``edge-m``) at an internal
scale, with the ``student-s`` depth encoder and the INT8-friendly ``lite``
fusion. Every point is trained from scratch with the *same* budget (steps,
batch, crop, learning rate, data) on procedural hazy/clear pairs
(``edgehaze.data.procedural`` via ``edgehaze.export.quantize.procedural_samples``)
and evaluated on held-out procedural pairs: PSNR/SSIM in FP32 (torch) and
INT8 (the fused ORT graph); PSNR when run at twice its scale on the same
pixels (pessimistic: the network sees half as many cells of the scene);
and "1080p framing": the test scenes resampled to 1080-line resolution
(x2.25) and run at twice the scale, which is what a 1080p camera showing
the same scene gives. Speed: the fused graph (``edgehaze.export.fused``) at
640x480 (the point's scale) and 1920x1080 (twice the scale), FP32 and
INT8, all points timed interleaved in one process.

Writes ``pareto.json``, ``pareto.md`` (table) and ``pareto.svg`` (PSNR vs
FPS, drawn by hand: no matplotlib here) and the trained checkpoints.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.speed_report import interleaved, ort_runner, ort_session  # noqa: E402

DEFAULT_POINTS = ("edge-xs:4", "edge-xs:8", "edge-s:4", "edge-s:8", "edge-s:16", "edge-m:8")


def parse_point(text: str) -> Tuple[str, int]:
    name, _, scale = text.partition(":")
    return name, int(scale or 4)


def train_point(backbone: str, scale: int, data: Sequence[Tuple[np.ndarray, np.ndarray]], steps: int, batch: int,
                crop: int, lr: float, seed: int, progress: bool = True,
                student_kwargs: Optional[dict] = None):  # type: ignore[no-untyped-def]
    """One point, trained with the shared budget (L1 on the restored image)."""
    import torch

    from edgehaze import build_dehazer

    torch.manual_seed(seed)
    # one thread: small tensors, and on a shared machine extra threads mostly wait for each other
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_dehazer(backbone, depth="student-s", fusion="lite", backbone_kwargs={"scale": scale},
                          depth_kwargs={"pool": scale, **(student_kwargs or {})})
    hazy = torch.stack([torch.from_numpy(h).permute(2, 0, 1) for h, _ in data])
    gt = torch.stack([torch.from_numpy(g).permute(2, 0, 1) for _, g in data])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    H, W = hazy.shape[-2:]
    model.train()
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"train {backbone}:{scale}", leave=False)
    for _ in it:
        idx = torch.randint(0, len(hazy), (batch,), generator=gen)
        y0 = int(torch.randint(0, H - crop + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, W - crop + 1, (1,), generator=gen))
        x = hazy[idx, :, y0:y0 + crop, x0:x0 + crop]
        t = gt[idx, :, y0:y0 + crop, x0:x0 + crop]
        loss = (model(x) - t).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    torch.set_num_threads(threads_before)
    return model.eval()


#: a 1080p frame shows the scene of a 480-line frame with 2.25x the pixels per side
FRAMING_1080 = 1080 / 480


def zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """H x W x 3 float image resampled by ``factor`` (bicubic, clipped): the same scene at another resolution."""
    import cv2

    return np.clip(cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC), 0, 1).astype(np.float32)


def eval_torch(model, test) -> Dict[str, float]:  # type: ignore[no-untyped-def]
    import torch

    from edgehaze.metrics.fullref import psnr, ssim

    p, s = [], []
    with torch.no_grad():
        for hazy, gt in test:
            x = torch.from_numpy(np.rint(hazy * 255) / 255).float().permute(2, 0, 1)[None]
            y = model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            y = np.rint(y * 255) / 255
            p.append(psnr(y, gt))
            s.append(ssim(y, gt))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}


def eval_onnx(sess, test) -> Dict[str, float]:  # type: ignore[no-untyped-def]
    from edgehaze.metrics.fullref import psnr, ssim

    p, s = [], []
    for hazy, gt in test:
        u8 = np.clip(np.rint(hazy * 255), 0, 255).astype(np.uint8)[None]
        y = sess.run(["dehazed"], {"image": u8})[0][0].astype(np.float32) / 255.0
        p.append(psnr(y, gt))
        s.append(ssim(y, gt))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}


def sweep(points: Sequence[str] = DEFAULT_POINTS, steps: int = 300, batch: int = 8, crop: int = 128, lr: float = 2e-3,
          n_train: int = 48, n_test: int = 8, data_size: Tuple[int, int] = (240, 320),
          sizes: Dict[str, Tuple[int, int]] = None, rounds: int = 8, threads: int = 2, out: "str | Path" = "runs/pareto",
          calib_n: int = 8, seed: int = 0, progress: bool = True, student_kwargs: Optional[dict] = None,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Dict[str, Any]:
    import torch

    from edgehaze.checkpoint import save_dehazer
    from edgehaze.export.fused import export_fused, internal_scale
    from edgehaze.export.quantize import procedural_samples
    from edgehaze.metrics.cost import count_macs, count_params

    torch.set_num_threads(threads)
    sizes = sizes or {"640x480": (480, 640), "1920x1080": (1080, 1920)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"rendering {n_train} training and {n_test} test pairs ({data_size[0]}x{data_size[1]})")
    train = procedural_samples(n_train, data_size, seed=1000 + seed)
    test = procedural_samples(n_test, data_size, seed=9000 + seed)
    calib = [h for h, _ in train[:calib_n]]
    rows: List[Dict[str, Any]] = []
    graphs: Dict[str, Dict[str, bytes]] = {}
    for spec in points:
        bb, scale = parse_point(spec)
        t0 = time.perf_counter()
        model = train_point(bb, scale, train, steps, batch, crop, lr, seed, progress, student_kwargs)
        train_s = time.perf_counter() - t0
        ckpt = save_dehazer(out / f"{bb}_x{scale}.safetensors", model,
                            extra={"pareto": {"steps": steps, "batch": batch, "crop": crop, "lr": lr}})
        fp32 = eval_torch(model, test)
        big = internal_scale(model, 2 * scale)
        fp32_2x = eval_torch(big, test)
        fp32_1080 = eval_torch(big, [(zoom(h, FRAMING_1080), zoom(g, FRAMING_1080)) for h, g in test])
        g = {"640x480:fp32": export_fused(model).SerializeToString(),
             "640x480:int8": export_fused(model, "int8", calib).SerializeToString(),
             "1920x1080:fp32": export_fused(big).SerializeToString(),
             "1920x1080:int8": export_fused(big, "int8", calib).SerializeToString()}
        int8 = eval_onnx(ort_session(g["640x480:int8"], threads), test)
        with torch.no_grad():
            macs = {k: int(count_macs(model if k == "640x480" else big, torch.rand(1, 3, *s))) for k, s in sizes.items()}
        graphs[spec] = g
        rows.append({"point": spec, "backbone": bb, "scale": scale, "scale_1080": 2 * scale,
                     "params": int(count_params(model)), "gmac": {k: round(v / 1e9, 3) for k, v in macs.items()},
                     "psnr_fp32": round(fp32["psnr"], 3), "ssim_fp32": round(fp32["ssim"], 4),
                     "psnr_int8": round(int8["psnr"], 3), "ssim_int8": round(int8["ssim"], 4),
                     "psnr_at_2x_scale": round(fp32_2x["psnr"], 3), "psnr_1080_framing": round(fp32_1080["psnr"], 3),
                     "train_s": round(train_s, 1),
                     "checkpoint": str(ckpt)})
        log(f"{spec}: PSNR FP32 {fp32['psnr']:.2f} / INT8 {int8['psnr']:.2f} dB, at 2x scale {fp32_2x['psnr']:.2f} dB")
    hazy_psnr = float(np.mean([__import__("edgehaze.metrics.fullref", fromlist=["psnr"]).psnr(h, g) for h, g in test]))
    for key, size in sizes.items():
        for prec in ("fp32", "int8"):
            log(f"timing {len(rows)} points at {key} {prec.upper()} (interleaved)")
            cases = {r["point"]: ort_runner(ort_session(graphs[r["point"]][f"{key}:{prec}"], threads), size) for r in rows}
            t = interleaved(cases, rounds=rounds, warmup=1)
            for r in rows:
                r.setdefault("fps", {})[f"{key}:{prec}"] = round(1000.0 / t[r["point"]]["median_ms"], 2)
    import os

    result = {"points": rows, "hazy_input_psnr": round(hazy_psnr, 3), "load": list(os.getloadavg()),
              "budget": {"steps": steps, "batch": batch, "crop": crop, "lr": lr, "n_train": n_train, "n_test": n_test,
                         "data_size": list(data_size)}}
    from edgehaze.fsutil import atomic_write_text

    atomic_write_text(out / "pareto.json", json.dumps(result, indent=2))
    atomic_write_text(out / "pareto.md", table(result))
    atomic_write_text(out / "pareto.svg", svg_plot(rows))
    return result


def table(result: Dict[str, Any]) -> str:
    b = result["budget"]
    lines = [f"Budget per point: {b['steps']} steps x batch {b['batch']} of {b['crop']}px crops, lr {b['lr']}, "
             f"{b['n_train']} procedural training pairs; {b['n_test']} held-out pairs at "
             f"{b['data_size'][1]}x{b['data_size'][0]} (hazy input: {result['hazy_input_psnr']} dB). "
             f"Load average {result['load'][0]:.2f}.", "",
             "| point | params | GMAC 640x480 | GMAC 1080p | PSNR FP32 | SSIM FP32 | PSNR INT8 | SSIM INT8 | PSNR @2x scale "
             "| PSNR 1080p framing | FPS 640x480 FP32 | FPS 640x480 INT8 | FPS 1080p FP32 | FPS 1080p INT8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["points"]:
        f = r["fps"]
        lines.append(f"| {r['point']} | {r['params']} | {r['gmac']['640x480']} | {r['gmac']['1920x1080']} | "
                     f"{r['psnr_fp32']} | {r['ssim_fp32']} | {r['psnr_int8']} | {r['ssim_int8']} | {r['psnr_at_2x_scale']} | "
                     f"{r.get('psnr_1080_framing', '-')} | "
                     f"{f['640x480:fp32']} | {f['640x480:int8']} | {f['1920x1080:fp32']} | {f['1920x1080:int8']} |")
    return "\n".join(lines) + "\n"


def svg_plot(rows: Sequence[Dict[str, Any]], width: int = 640, height: int = 420) -> str:
    """PSNR (y) vs FPS at 640x480 (x), FP32 and INT8 series, as a standalone SVG."""
    pts = [(r["fps"]["640x480:fp32"], r["psnr_fp32"], r["point"], "#1f77b4") for r in rows]
    pts += [(r["fps"]["640x480:int8"], r["psnr_int8"], r["point"], "#d62728") for r in rows]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = 0.0, max(xs) * 1.1 if xs else 1.0
    y0, y1 = (min(ys) - 0.5, max(ys) + 0.5) if ys else (0.0, 1.0)
    ml, mr, mt, mb = 60, 20, 30, 50

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0 or 1) * (width - ml - mr)

    def sy(v: float) -> float:
        return height - mb - (v - y0) / (y1 - y0 or 1) * (height - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">PSNR vs FPS at 640x480 (ORT CPU, 2 threads)</text>',
           f'<line x1="{ml}" y1="{height - mb}" x2="{width - mr}" y2="{height - mb}" stroke="black"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{height - mb}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">FPS</text>',
           f'<text x="14" y="{height / 2}" text-anchor="middle" transform="rotate(-90 14 {height / 2})">PSNR (dB)</text>']
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        out.append(f'<text x="{sx(xv):.1f}" y="{height - mb + 15}" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<text x="{ml - 5}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.1f}</text>')
    for fx, py, name, colour in pts:
        out.append(f'<circle cx="{sx(fx):.1f}" cy="{sy(py):.1f}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{sx(fx) + 6:.1f}" y="{sy(py) - 6:.1f}" fill="{colour}">{name}</text>')
    out.append(f'<circle cx="{width - 120}" cy="{mt + 10}" r="4" fill="#1f77b4"/><text x="{width - 110}" y="{mt + 14}">FP32</text>')
    out.append(f'<circle cx="{width - 120}" cy="{mt + 28}" r="4" fill="#d62728"/><text x="{width - 110}" y="{mt + 32}">INT8</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", nargs="+", default=list(DEFAULT_POINTS), help="BACKBONE:SCALE, e.g. edge-s:4")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-test", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/pareto")
    a = p.parse_args(argv)
    r = sweep(a.points, a.steps, a.batch, a.crop, n_train=a.n_train, n_test=a.n_test, rounds=a.rounds,
              threads=a.threads, out=a.out)
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
