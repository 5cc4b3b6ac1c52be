"""Pareto sweep: quality vs speed over the student's size and internal resolution.

    python benchmarks/pareto.py                      # default sweep, ~equal training budget per point
    python benchmarks/pareto.py --points edge-xs:4 edge-s:4 --steps 20 --out /tmp/p
    python benchmarks/pareto.py --synth data/real12 --data $EDGEHAZE_SHARED/data \
        --points edge-xs:8 edge-s:8 edge-s:16 edge-m:8 --steps 1500 --batch 8 --crop 128 \
        --backbone-kwargs '{"apply":"guided","context":true,"guide_radius":4}' --out runs/pareto-real

Each point is a backbone (``edge-xs``/``edge-s``/``edge-m``) at an internal
scale, with the ``student-s`` depth encoder (``pool`` = the scale) and the
INT8-friendly ``lite`` fusion. Every point is trained from scratch with the
*same* budget (steps, batch, crop, learning rate, seed, data), so the points
differ only in size and resolution.

Procedural data (the default): hazy/clear pairs rendered in memory
(``edgehaze.data.procedural`` via ``edgehaze.export.quantize.procedural_samples``),
evaluated on held-out procedural pairs: PSNR/SSIM in FP32 (torch) and INT8
(the fused ORT graph); PSNR when run at twice its scale on the same pixels
(pessimistic: the network sees half as many cells of the scene); and "1080p
framing": the test scenes resampled to 1080-line resolution (x2.25) and run
at twice the scale, which is what a 1080p camera showing the same scene gives.

Real data (``--synth DIR``): training pairs from the ``train/`` split of an
``edgehaze synth --rgbd`` folder only (its ``val/`` and ``test/`` are never
read; ``--n-train`` takes a seeded random subset; INT8 calibration uses the
same train pairs), and the test sets of ``edgehaze.quality`` under ``--data``
(SOTS-indoor test, optionally FRIDA2 test), scored by
``edgehaze.quality.score_set`` as ``benchmarks/quality.py`` scores them: PSNR,
SSIM and halo for FP32 (the saved checkpoint) and INT8 (the fused graph), with
the hazy input and the dark-channel prior on the same images as references
(procedural test scenes say nothing about real haze, which is what a user
ships against). The "@2x scale" and "1080p framing" columns are procedural
only (real test images come at one resolution).

Speed: the fused graph (``edgehaze.export.fused``) at 640x480 (the point's
scale) and 1920x1080 (twice the scale), FP32 and INT8, all points timed
interleaved in one process.

Writes ``pareto.json``, ``pareto.md`` (table) and ``pareto.svg`` (PSNR vs
FPS, drawn by hand: no matplotlib here; the prior as a horizontal line) and
the trained checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
import os
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
#: the real test sets scored by default (name prefixes of ``edgehaze.quality.benchmark_sets``)
DEFAULT_SETS = ("sots-indoor",)
Pair = Tuple[np.ndarray, np.ndarray]
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_point(text: str) -> Tuple[str, int]:
    name, _, scale = text.partition(":")
    return name, int(scale or 4)


# ---------------------------------------------------------------- training data
def _to_float01(x: Any) -> Any:
    """A uint8 tensor as float in [0, 1]; float tensors as they are."""
    import torch

    return x.float() / 255.0 if x.dtype == torch.uint8 else x


class CropSampler:
    """Random training crops from hazy/clear pairs of H x W x 3 arrays (float in [0, 1], or uint8).

    Pairs of one size are stacked and share one crop window per batch: the
    procedural sweep's sampling, kept draw for draw so its results do not
    move. Pairs of different sizes (the real synth folders hold 620x460 and
    640x480 images) get a window each, inside their own image. uint8 pairs
    stay uint8 until cropped: 800 real pairs are ~1.5 GB that way, 6 GB as
    float32.
    """

    def __init__(self, data: Sequence[Pair], crop: int) -> None:
        import torch

        from edgehaze.errors import EdgehazeError

        if not data:
            raise EdgehazeError("no training pairs")
        small = [h.shape for h, _ in data if min(h.shape[:2]) < crop]
        if small:
            raise EdgehazeError(f"{len(small)} training images are smaller than the {crop}px crop (e.g. {small[0]})")
        self.crop = crop
        hazy = [torch.from_numpy(np.ascontiguousarray(h)).permute(2, 0, 1) for h, _ in data]
        gt = [torch.from_numpy(np.ascontiguousarray(g)).permute(2, 0, 1) for _, g in data]
        self.stacked = len({tuple(h.shape) for h in hazy}) == 1
        self.hazy: Any = torch.stack(hazy) if self.stacked else hazy
        self.gt: Any = torch.stack(gt) if self.stacked else gt

    def sample(self, batch: int, gen: Any) -> Tuple[Any, Any]:
        """``(hazy, gt)``: ``batch`` x 3 x crop x crop float tensors."""
        import torch

        c = self.crop
        idx = torch.randint(0, len(self.hazy), (batch,), generator=gen)
        if self.stacked:
            H, W = self.hazy.shape[-2:]
            y0 = int(torch.randint(0, H - c + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, W - c + 1, (1,), generator=gen))
            return (_to_float01(self.hazy[idx, :, y0:y0 + c, x0:x0 + c]),
                    _to_float01(self.gt[idx, :, y0:y0 + c, x0:x0 + c]))
        xs, ts = [], []
        for i in idx.tolist():
            H, W = self.hazy[i].shape[-2:]
            y0 = int(torch.randint(0, H - c + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, W - c + 1, (1,), generator=gen))
            xs.append(self.hazy[i][:, y0:y0 + c, x0:x0 + c])
            ts.append(self.gt[i][:, y0:y0 + c, x0:x0 + c])
        return _to_float01(torch.stack(xs)), _to_float01(torch.stack(ts))


def _compact(img: np.ndarray) -> np.ndarray:
    """``img`` as uint8 when that is exact (an 8-bit file), else float32: a quarter of the memory."""
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return u8 if np.array_equal(u8.astype(np.float32) / np.float32(255.0), img) else img.astype(np.float32)


def load_synth_pairs(synth: "str | Path", n_train: Optional[int], crop: int, seed: int,
                     log: Log = _stderr) -> Tuple[List[Pair], Dict[str, Any]]:
    """Training pairs from ``synth/train`` (the folder ``edgehaze synth --rgbd`` writes), and where they came from.

    Only the train split is listed or read: ``val/`` selects checkpoints
    elsewhere and ``test/`` must stay unseen. ``n_train`` takes a seeded
    random subset (the pairs come back in that random order, so the first
    few, used for INT8 calibration, span several scenes). Pairs are decoded
    by the training loader (``PairedDataset``), which also refuses images
    smaller than the crop and hazy/GT size mismatches.
    """
    from edgehaze.data.datasets import PairedDataset
    from edgehaze.data.layouts import find_pairs
    from edgehaze.errors import EdgehazeError

    synth = Path(synth)
    if not (synth / "train" / "hazy").is_dir():
        raise EdgehazeError(f"--synth {synth}: no train/hazy/ (make it with edgehaze synth --rgbd ... --keep-pairs)")
    found = find_pairs(synth, layout="dehazeformer", split="train").pairs
    order = np.random.default_rng(seed).permutation(len(found))
    chosen = [found[i] for i in order[:n_train or len(found)]]
    log(f"reading {len(chosen)} of {len(found)} training pairs from {synth}/train")
    ds = PairedDataset(chosen, crop=crop)
    pairs = []
    for i in range(len(ds)):
        hazy, gt = ds.load_pair(i)
        pairs.append((_compact(hazy), _compact(gt)))
    meta_path = synth / "synth.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    source = {"kind": "synth", "root": str(synth.resolve()), "split": "train", "pairs": len(pairs),
              "available": len(found), "sizes": sorted({f"{h.shape[1]}x{h.shape[0]}" for h, _ in pairs}),
              "synth_counts": meta.get("counts"), "synth_variants": meta.get("variants")}
    return pairs, source


# ---------------------------------------------------------------- one point
def train_point(backbone: str, scale: int, data: Sequence[Pair], steps: int, batch: int,
                crop: int, lr: float, seed: int, progress: bool = True,
                student_kwargs: Optional[dict] = None,
                backbone_kwargs: Optional[dict] = None):  # type: ignore[no-untyped-def]
    """One point, trained with the shared budget (L1 on the restored image).

    ``data``: pairs of one size (stacked) or of several (a crop per image),
    see :class:`CropSampler`. ``backbone_kwargs`` (e.g. the shipped
    ``apply: guided, context: true``) go to every point; the scale is the point's.
    """
    import torch

    from edgehaze import build_dehazer

    torch.manual_seed(seed)
    # one thread: small tensors, and on a shared machine extra threads mostly wait for each other
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_dehazer(backbone, depth="student-s", fusion="lite",
                          backbone_kwargs={**(backbone_kwargs or {}), "scale": scale},
                          depth_kwargs={"pool": scale, **(student_kwargs or {})})
    sampler = CropSampler(data, crop)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"train {backbone}:{scale}", leave=False)
    for _ in it:
        x, t = sampler.sample(batch, gen)
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


def graph_runner(sess) -> Callable[[np.ndarray], np.ndarray]:  # type: ignore[no-untyped-def]
    """``img01 -> img01`` through a fused ``image`` -> ``dehazed`` graph (RGB uint8 in and out, as shipped)."""

    def run(img01: np.ndarray) -> np.ndarray:
        u8 = np.clip(np.rint(np.asarray(img01) * 255), 0, 255).astype(np.uint8)[None]
        return sess.run(["dehazed"], {"image": u8})[0][0].astype(np.float32) / 255.0

    return run


def eval_onnx(sess, test) -> Dict[str, float]:  # type: ignore[no-untyped-def]
    from edgehaze.metrics.fullref import psnr, ssim

    run = graph_runner(sess)
    p, s = [], []
    for hazy, gt in test:
        y = run(hazy)
        p.append(psnr(y, gt))
        s.append(ssim(y, gt))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}


# ---------------------------------------------------------------- real test sets
def real_test_sets(data: "str | Path", names: Sequence[str] = DEFAULT_SETS) -> List[Any]:
    """The ``edgehaze.quality`` sets under ``data`` whose names start with one of ``names``, ground truth only."""
    from edgehaze.errors import EdgehazeError
    from edgehaze.quality import benchmark_sets

    sets = [s for s in benchmark_sets(data, names) if s.has_gt]
    if not sets:
        raise EdgehazeError(f"--data {data}: no test set with ground truth matching {', '.join(names)}")
    return sets


def _num(v: float, digits: int) -> Optional[float]:
    """Rounded, or None for NaN (strict JSON; the halo is NaN on an image without strong edges)."""
    return None if math.isnan(v) else round(float(v), digits)


def _scores_json(scores: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``score_set``'s :class:`Scores` per method as plain numbers (JSON)."""
    return {m: {**{k: _num(v, 4) for k, v in sc.metrics.items()}, "ms": _num(sc.ms, 1), "images": int(sc.count)}
            for m, sc in scores.items()}


def score_methods(methods: Dict[str, Callable[[np.ndarray], np.ndarray]], sets: Sequence[Any],
                  progress: bool = False) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{set: {method: {psnr, ssim, halo, ms, images}}}``: the numbers ``benchmarks/quality.py`` reports."""
    from edgehaze.quality import score_set

    return {s.name: _scores_json(score_set(methods, s, progress=progress)[0]) for s in sets}


def score_baselines(sets: Sequence[Any], progress: bool = False) -> Dict[str, Dict[str, Dict[str, float]]]:
    """The hazy input and the dark-channel prior on every test image: what each point must beat."""
    from edgehaze.quality import baseline_methods

    return score_methods(baseline_methods(), sets, progress)


# ---------------------------------------------------------------- the sweep
class SweepData:
    """What every point shares: training pairs, calibration images, test data and where they came from.

    A plain class, not a dataclass: ``edgehaze bench --pareto`` loads this
    script without registering it in ``sys.modules``, where dataclasses fail.
    """

    def __init__(self, train: List[Pair], calib: List[np.ndarray], test: Optional[List[Pair]] = None,
                 sets: Optional[List[Any]] = None, source: Optional[Dict[str, Any]] = None) -> None:
        self.train, self.calib = train, calib
        self.test: List[Pair] = test or []  # procedural held-out pairs (empty with real test sets)
        self.sets: List[Any] = sets or []  # edgehaze.quality EvalSets (empty for procedural)
        self.source: Dict[str, Any] = source or {}


def _float_image(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / np.float32(255.0) if img.dtype == np.uint8 else img


def prepare_data(synth: Optional["str | Path"], data: Optional["str | Path"], sets: Sequence[str],
                 n_train: Optional[int], n_test: int, data_size: Tuple[int, int], crop: int, calib_n: int,
                 seed: int, log: Log) -> SweepData:
    """Training pairs (procedural, or ``synth``'s train split); test data (procedural, or the real sets in ``data``)."""
    from edgehaze.export.quantize import procedural_samples

    if synth is None:
        n = 48 if n_train is None else n_train
        log(f"rendering {n} procedural training pairs ({data_size[0]}x{data_size[1]})")
        train = procedural_samples(n, data_size, seed=1000 + seed)
        train_src: Dict[str, Any] = {"kind": "procedural", "pairs": n, "size": list(data_size)}
    else:
        train, train_src = load_synth_pairs(synth, n_train, crop, seed, log)
    calib = [_float_image(h) for h, _ in train[:calib_n]]
    if data is None:
        log(f"rendering {n_test} procedural test pairs ({data_size[0]}x{data_size[1]})")
        test = procedural_samples(n_test, data_size, seed=9000 + seed)
        return SweepData(train, calib, test=test, source={"train": train_src, "test": {
            "kind": "procedural", "pairs": n_test, "size": list(data_size)}})
    evalsets = real_test_sets(data, sets)
    log("test sets: " + ", ".join(f"{s.name} ({len(s.hazy)})" for s in evalsets))
    return SweepData(train, calib, sets=evalsets, source={"train": train_src, "test": {
        "kind": "real", "root": str(Path(data).resolve()),
        "sets": {s.name: {"images": len(s.hazy), "note": s.note} for s in evalsets}}})


def _quality(model, big, ckpt: Path, int8: bytes, d: SweepData, threads: int,  # type: ignore[no-untyped-def]
             progress: bool) -> Dict[str, Any]:
    """A point's quality columns: procedural (FP32, INT8, at 2x scale, 1080p framing) or per real test set."""
    if not d.sets:
        fp32, q8 = eval_torch(model, d.test), eval_onnx(ort_session(int8, threads), d.test)
        fp32_2x = eval_torch(big, d.test)
        fp32_1080 = eval_torch(big, [(zoom(h, FRAMING_1080), zoom(g, FRAMING_1080)) for h, g in d.test])
        return {"psnr_fp32": round(fp32["psnr"], 3), "ssim_fp32": round(fp32["ssim"], 4),
                "psnr_int8": round(q8["psnr"], 3), "ssim_int8": round(q8["ssim"], 4),
                "psnr_at_2x_scale": round(fp32_2x["psnr"], 3), "psnr_1080_framing": round(fp32_1080["psnr"], 3)}
    from edgehaze.data.runners import make_runner

    # FP32: the saved checkpoint through the runner benchmarks/quality.py uses; INT8: the fused graph that ships
    real = score_methods({"fp32": make_runner(ckpt, threads=threads), "int8": graph_runner(ort_session(int8, threads))},
                         d.sets, progress)
    first = real[d.sets[0].name]
    cols = {f"{m}_{p}": None if first[p].get(m) is None else round(first[p][m], 4 if m == "ssim" else 3)
            for p in ("fp32", "int8") for m in ("psnr", "ssim", "halo")}
    return {**cols, "psnr_at_2x_scale": None, "psnr_1080_framing": None, "test_set": d.sets[0].name, "real": real}


def run_point(spec: str, d: SweepData, budget: Dict[str, Any], sizes: Dict[str, Tuple[int, int]], out: Path,
              threads: int, progress: bool, student_kwargs: Optional[dict],
              log: Log) -> Tuple[Dict[str, Any], Dict[str, bytes]]:
    """Train, save, export (FP32/INT8 at 640x480 and 1080p scale), cost and score one point: its row and graphs."""
    import torch

    from edgehaze.checkpoint import save_dehazer
    from edgehaze.export.fused import export_fused, internal_scale
    from edgehaze.metrics.cost import count_macs, count_params

    bb, scale = parse_point(spec)
    b = budget
    t0 = time.perf_counter()
    model = train_point(bb, scale, d.train, b["steps"], b["batch"], b["crop"], b["lr"], b["seed"], progress,
                        student_kwargs, b["backbone_kwargs"])
    train_s = time.perf_counter() - t0
    ckpt = save_dehazer(out / f"{bb}_x{scale}.safetensors", model,
                        extra={"pareto": {k: b[k] for k in ("steps", "batch", "crop", "lr", "seed", "backbone_kwargs")},
                               "pareto_data": d.source["train"]})
    big = internal_scale(model, 2 * scale)
    g = {"640x480:fp32": export_fused(model).SerializeToString(),
         "640x480:int8": export_fused(model, "int8", d.calib).SerializeToString(),
         "1920x1080:fp32": export_fused(big).SerializeToString(),
         "1920x1080:int8": export_fused(big, "int8", d.calib).SerializeToString()}
    q = _quality(model, big, ckpt, g["640x480:int8"], d, threads, progress)
    with torch.no_grad():
        macs = {k: int(count_macs(model if k == "640x480" else big, torch.rand(1, 3, *s))) for k, s in sizes.items()}
    row = {"point": spec, "backbone": bb, "scale": scale, "scale_1080": 2 * scale,
           "params": int(count_params(model)), "gmac": {k: round(v / 1e9, 3) for k, v in macs.items()},
           **q, "train_s": round(train_s, 1), "checkpoint": str(ckpt)}
    extra = (f", at 2x scale {q['psnr_at_2x_scale']:.2f} dB" if q["psnr_at_2x_scale"] is not None
             else f" on {q['test_set']} (halo {_fmt(q['halo_fp32'])} / {_fmt(q['halo_int8'])})")
    log(f"{spec}: PSNR FP32 {q['psnr_fp32']:.2f} / INT8 {q['psnr_int8']:.2f} dB{extra}")
    return row, g


def time_points(rows: List[Dict[str, Any]], graphs: Dict[str, Dict[str, bytes]], sizes: Dict[str, Tuple[int, int]],
                rounds: int, threads: int, log: Log) -> None:
    """Every point's fused graphs timed interleaved (same load for all): ``row["fps"]`` per size and precision."""
    for key, size in sizes.items():
        for prec in ("fp32", "int8"):
            log(f"timing {len(rows)} points at {key} {prec.upper()} (interleaved)")
            cases = {r["point"]: ort_runner(ort_session(graphs[r["point"]][f"{key}:{prec}"], threads), size) for r in rows}
            t = interleaved(cases, rounds=rounds, warmup=1)
            for r in rows:
                r.setdefault("fps", {})[f"{key}:{prec}"] = round(1000.0 / t[r["point"]]["median_ms"], 2)


def sweep(points: Sequence[str] = DEFAULT_POINTS, steps: int = 300, batch: int = 8, crop: int = 128, lr: float = 2e-3,
          n_train: Optional[int] = 48, n_test: int = 8, data_size: Tuple[int, int] = (240, 320),
          sizes: Optional[Dict[str, Tuple[int, int]]] = None, rounds: int = 8, threads: int = 2,
          out: "str | Path" = "runs/pareto", calib_n: int = 8, seed: int = 0, progress: bool = True,
          student_kwargs: Optional[dict] = None, log: Log = _stderr, synth: Optional["str | Path"] = None,
          data: Optional["str | Path"] = None, sets: Sequence[str] = DEFAULT_SETS,
          backbone_kwargs: Optional[dict] = None) -> Dict[str, Any]:
    """Train, score and time every point; write ``pareto.json``/``.md``/``.svg`` into ``out``.

    ``synth``: train on that folder's train split instead of procedural pairs
    (``n_train`` None: all of them). ``data``: test on the real sets there
    (``sets``: name prefixes) with the hazy input and the dark-channel prior
    beside the points, instead of procedural held-out pairs.
    """
    import torch

    torch.set_num_threads(threads)
    sizes = sizes or {"640x480": (480, 640), "1920x1080": (1080, 1920)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = prepare_data(synth, data, sets, n_train, n_test, data_size, crop, calib_n, seed, log)
    budget = {"steps": steps, "batch": batch, "crop": crop, "lr": lr, "seed": seed,
              "backbone_kwargs": dict(backbone_kwargs or {}), "n_train": len(d.train),
              "n_test": len(d.test) if not d.sets else sum(len(s.hazy) for s in d.sets), "data_size": list(data_size)}
    baselines = score_baselines(d.sets, progress) if d.sets else {}
    rows: List[Dict[str, Any]] = []
    graphs: Dict[str, Dict[str, bytes]] = {}
    t_start = time.perf_counter()
    for i, spec in enumerate(points):
        row, graphs[spec] = run_point(spec, d, budget, sizes, out, threads, progress, student_kwargs, log)
        rows.append(row)
        if i == 0 and len(points) > 1:
            per = time.perf_counter() - t_start
            log(f"estimate: {spec} took {per / 60:.1f} min; {len(points) - 1} more point(s): about "
                f"{per * (len(points) - 1) / 60:.1f} min if each costs the same (bigger backbones cost more), "
                f"then timing ({rounds} rounds x {2 * len(sizes)} graphs x {len(points)} points)")
    time_points(rows, graphs, sizes, rounds, threads, log)
    result = {"points": rows, "load": list(os.getloadavg()), "budget": budget, "data": d.source}
    if d.sets:
        result.update(baselines=baselines, test_set=d.sets[0].name,
                      hazy_input_psnr=baselines[d.sets[0].name]["hazy input"]["psnr"])
    else:
        from edgehaze.metrics.fullref import psnr

        result["hazy_input_psnr"] = round(float(np.mean([psnr(h, g) for h, g in d.test])), 3)
    write_results(out, result)
    return result


def write_results(out: Path, result: Dict[str, Any]) -> None:
    """``pareto.json``, ``pareto.md`` and ``pareto.svg``, each written atomically."""
    from edgehaze.fsutil import atomic_write_text

    prior = result.get("baselines", {}).get(result.get("test_set"), {}).get("dark-channel prior")
    atomic_write_text(out / "pareto.json", json.dumps(result, indent=2))
    atomic_write_text(out / "pareto.md", table(result))
    atomic_write_text(out / "pareto.svg", svg_plot(result["points"], prior["psnr"] if prior else None,
                                                   result.get("test_set")))


# ---------------------------------------------------------------- report
def _fmt(v: Any, digits: Optional[int] = None) -> str:
    """A table cell: '-' for a missing number, else the number (to ``digits`` places when given)."""
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if digits is not None else str(v)


def _header(result: Dict[str, Any]) -> List[str]:
    """What was trained on and tested on, the budget, and (real data) the references' numbers."""
    b, src = result["budget"], result.get("data", {})
    train, test = src.get("train", {"kind": "procedural"}), src.get("test", {"kind": "procedural"})
    kw = f"; backbone kwargs {json.dumps(b['backbone_kwargs'])}" if b.get("backbone_kwargs") else ""
    if train["kind"] == "synth":
        subset = (f"all {train['pairs']}" if train["pairs"] == train["available"]
                  else f"{train['pairs']} (a seeded random subset) of its {train['available']}")
        data = (f"Training data: synth folder `{train['root']}`, train split only: {subset} train pairs "
                f"(sizes {', '.join(train['sizes'])})")
    else:
        data = f"Training data: {b['n_train']} procedural pairs"
    lines = [f"Budget per point: {b['steps']} steps x batch {b['batch']} of {b['crop']}px crops, lr {b['lr']}, "
             f"seed {b.get('seed', 0)}{kw}. {data}.", ""]
    if test["kind"] == "real":
        sets = ", ".join(f"{n} ({s['images']} images)" for n, s in test["sets"].items())
        lines += [f"Test: real sets in `{test['root']}`: {sets}. The table's quality columns are on "
                  f"{result['test_set']}; every set is at the end. References on the same images:", ""]
        for name, per in result["baselines"].items():
            for method in ("dark-channel prior", "hazy input"):
                m = per[method]
                lines.append(f"- {name}, {method}: PSNR {_fmt(m['psnr'], 2)} dB, SSIM {_fmt(m['ssim'], 3)}, "
                             f"halo {_fmt(m['halo'], 2)} grey levels")
        lines.append("")
    else:
        lines += [f"Test: {b['n_test']} held-out procedural pairs at {b['data_size'][1]}x{b['data_size'][0]} "
                  f"(hazy input: {result['hazy_input_psnr']} dB).", ""]
    lines.append(f"Load average {result['load'][0]:.2f}.")
    return lines


def table(result: Dict[str, Any]) -> str:
    """The Markdown report: header, one row per point, and (real data) every test set's rows."""
    real = "baselines" in result
    cols: List[Tuple[str, Callable[[Dict[str, Any]], Any]]] = [
        ("point", lambda r: r["point"]), ("params", lambda r: r["params"]),
        ("GMAC 640x480", lambda r: r["gmac"]["640x480"]), ("GMAC 1080p", lambda r: r["gmac"]["1920x1080"])]
    for prec in ("fp32", "int8"):
        for m in ("psnr", "ssim") + (("halo",) if real else ()):
            cols.append((f"{m.upper() if m != 'halo' else 'halo'} {prec.upper()}", lambda r, k=f"{m}_{prec}": r[k]))
    cols += [("PSNR @2x scale", lambda r: r.get("psnr_at_2x_scale")),
             ("PSNR 1080p framing", lambda r: r.get("psnr_1080_framing"))]
    for key, label in (("640x480", "640x480"), ("1920x1080", "1080p")):
        for prec in ("fp32", "int8"):
            cols.append((f"FPS {label} {prec.upper()}", lambda r, k=f"{key}:{prec}": r["fps"][k]))
    lines = _header(result) + ["", "| " + " | ".join(c for c, _ in cols) + " |",
                               "|---|" + "---:|" * (len(cols) - 1)]
    lines += ["| " + " | ".join(_fmt(fn(r)) for _, fn in cols) + " |" for r in result["points"]]
    if real:
        from edgehaze.quality import Scores, markdown_table

        per_set = {}
        for name, base in result["baselines"].items():
            per = {m: base[m] for m in ("hazy input", "dark-channel prior")}
            per.update({f"{r['point']} {p.upper()}": r["real"][name][p]
                        for r in result["points"] for p in ("fp32", "int8")})
            per_set[name] = {m: Scores({k: math.nan if v.get(k) is None else v[k] for k in ("psnr", "ssim", "halo")},
                                       math.nan if v["ms"] is None else v["ms"], v["images"])
                             for m, v in per.items()}
        lines += ["", "Every test set (halo: grey levels of local error near strong edges, lower is better):", "",
                  markdown_table(per_set, ("psnr", "ssim", "halo"))]
    return "\n".join(lines) + "\n"


def svg_plot(rows: Sequence[Dict[str, Any]], prior: Optional[float] = None, test_set: Optional[str] = None,
             width: int = 640, height: int = 420) -> str:
    """PSNR (y) vs FPS at 640x480 (x), FP32 and INT8 series, as a standalone SVG.

    ``prior``: the dark-channel prior's PSNR on the same test set, drawn as a
    horizontal line (it has no FPS in this graph: it is not a fused ONNX graph).
    """
    pts = [(r["fps"]["640x480:fp32"], r["psnr_fp32"], r["point"], "#1f77b4") for r in rows]
    pts += [(r["fps"]["640x480:int8"], r["psnr_int8"], r["point"], "#d62728") for r in rows]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts] + ([prior] if prior is not None else [])
    x0, x1 = 0.0, max(xs) * 1.1 if xs else 1.0
    y0, y1 = (min(ys) - 0.5, max(ys) + 0.5) if ys else (0.0, 1.0)
    ml, mr, mt, mb = 60, 20, 30, 50

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0 or 1) * (width - ml - mr)

    def sy(v: float) -> float:
        return height - mb - (v - y0) / (y1 - y0 or 1) * (height - mt - mb)

    on = f" on {test_set}" if test_set else ""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">PSNR{on} vs FPS at 640x480 (ORT CPU)</text>',
           f'<line x1="{ml}" y1="{height - mb}" x2="{width - mr}" y2="{height - mb}" stroke="black"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{height - mb}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">FPS</text>',
           f'<text x="14" y="{height / 2}" text-anchor="middle" transform="rotate(-90 14 {height / 2})">PSNR (dB)</text>']
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        out.append(f'<text x="{sx(xv):.1f}" y="{height - mb + 15}" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<text x="{ml - 5}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.1f}</text>')
    if prior is not None:
        out.append(f'<line x1="{ml}" y1="{sy(prior):.1f}" x2="{width - mr}" y2="{sy(prior):.1f}" stroke="#2ca02c" '
                   'stroke-dasharray="6 4"/>')
        out.append(f'<text x="{ml + 6}" y="{sy(prior) - 5:.1f}" fill="#2ca02c">dark-channel prior ({prior:.2f} dB)</text>')
    for fx, py, name, colour in pts:
        out.append(f'<circle cx="{sx(fx):.1f}" cy="{sy(py):.1f}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{sx(fx) + 6:.1f}" y="{sy(py) - 6:.1f}" fill="{colour}">{name}</text>')
    out.append(f'<circle cx="{width - 120}" cy="{mt + 10}" r="4" fill="#1f77b4"/><text x="{width - 110}" y="{mt + 14}">FP32</text>')
    out.append(f'<circle cx="{width - 120}" cy="{mt + 28}" r="4" fill="#d62728"/><text x="{width - 110}" y="{mt + 32}">INT8</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- command line
def _backbone_kwargs(text: str) -> dict:
    """``--backbone-kwargs`` JSON: an object, without ``scale`` (each point sets its own)."""
    try:
        kw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--backbone-kwargs {text!r}: not JSON ({exc})")
    if not isinstance(kw, dict):
        raise SystemExit(f"--backbone-kwargs {text!r}: give a JSON object, e.g. '{{\"apply\": \"guided\"}}'")
    if "scale" in kw:
        raise SystemExit("--backbone-kwargs: leave out 'scale'; each point sets it (BACKBONE:SCALE)")
    return kw


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", nargs="+", default=list(DEFAULT_POINTS), help="BACKBONE:SCALE, e.g. edge-s:4")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0, help="training, data subset and procedural scenes")
    p.add_argument("--n-train", type=int, default=None,
                   help="training pairs (procedural: 48; --synth: a seeded random subset, default all)")
    p.add_argument("--n-test", type=int, default=8, help="procedural test pairs (ignored with real test sets)")
    p.add_argument("--synth", default=None, help="train on this `edgehaze synth --rgbd` folder's train/ split")
    p.add_argument("--data", default=None,
                   help="test on the real sets in this shared data folder (default with --synth: $EDGEHAZE_SHARED/data)")
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS),
                   help="real test sets, name prefixes (sots-indoor, frida2); ground-truth sets only")
    p.add_argument("--backbone-kwargs", type=_backbone_kwargs, default={},
                   help='JSON merged into every point\'s backbone kwargs, e.g. \'{"apply":"guided","context":true}\'')
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/pareto")
    a = p.parse_args(argv)
    data = a.data
    if data is None and a.synth is not None:
        shared = os.environ.get("EDGEHAZE_SHARED")
        if not shared:
            raise SystemExit("--synth needs real test sets: give --data DIR (the shared data folder) "
                             "or set EDGEHAZE_SHARED")
        data = str(Path(shared) / "data")
    r = sweep(a.points, a.steps, a.batch, a.crop, lr=a.lr, n_train=a.n_train, n_test=a.n_test, rounds=a.rounds,
              threads=a.threads, out=a.out, seed=a.seed, synth=a.synth, data=data, sets=a.sets,
              backbone_kwargs=a.backbone_kwargs)
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
