"""The model card of a shipped model (``runtime/models/NAME.md``), rendered from its manifest entry alone.

Why from the manifest only: ``edgehaze models pack`` copies every number
into the manifest from the run's ``report.json`` (and its own two
measurements), so rendering the card from that entry makes "the card's
numbers are the manifest's" true by construction, and a test can re-render
the shipped card and compare it byte for byte. No clock, no machine state:
the same entry always gives the same text.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

#: metrics shown per test set, in this order (those a set has)
METRICS = ("psnr", "ssim", "halo", "psnr_in", "fade", "niqe")
TITLES = {"psnr_in": "PSNR vs input"}
METHODS = ("hazy input", "dark-channel prior", "student FP32", "student INT8")


def fmt(v: Any, spec: str) -> str:
    """A number for a table cell ("-" for missing or not finite)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _metric_spec(m: str) -> str:
    return ".3f" if m in ("ssim", "fade") else ".2f"


def quality_lines(quality: Dict[str, Any]) -> List[str]:
    """One row per test set and method (hazy input, prior, FP32, INT8), the metrics each set has."""
    if not quality:
        return ["The packed run's report has no quality table."]
    have = [m for m in METRICS if any(m in (per.get(meth) or {}) for per in quality.values() for meth in METHODS)]
    lines = ["| test set | images | method | " + " | ".join(TITLES.get(m, m.upper()) for m in have) + " |",
             "|---|---:|---|" + "---:|" * len(have)]
    for set_name, per in quality.items():
        for meth in METHODS:
            if meth not in per:
                continue
            vals = per[meth]
            lines.append(f"| {set_name} | {per.get('_count', '')} | {meth} | "
                         + " | ".join(fmt(vals.get(m), _metric_spec(m)) for m in have) + " |")
    return lines


def stream_lines(stream: List[Dict[str, Any]]) -> List[str]:
    if not stream:
        return ["The packed run's report has no stream runs."]
    lines = ["| run | artifact | frames | frame size | smoothing | sink | FPS |", "|---|---|---:|---|---:|---|---:|"]
    for r in stream:
        size = f"{r['size'][1]}x{r['size'][0]}" if r.get("size") else "-"
        lines.append(f"| {r['run']} ({r.get('clip')}) | `{r['model']}` | {fmt(r.get('frames'), 'd')} | {size} | "
                     f"{fmt(r.get('temporal'), '.2g')} | {'side-by-side mp4' if r['writes_video'] else 'null'} | "
                     f"{fmt(r.get('fps'), '.1f')} |")
    return lines


def flicker_lines(flicker: Dict[str, Any]) -> List[str]:
    if not flicker:
        return ["Not measured for this pack (the run has no stream clip, or `--no-measure` was given)."]
    pf, sm = flicker.get("per_frame") or {}, flicker.get("default_smoothing") or {}
    size = pf.get("frame_size") or [0, 0]
    return [f"Warping error of the output over the input's own (Lai et al. 2018; 1 = as steady as the input), "
            f"`{flicker['model']}` on the run's `{flicker['clip']}` ({flicker.get('clip_kind')}, "
            f"{fmt(pf.get('frames'), 'd')} frames of {size[0]}x{size[1]}), measured by `edgehaze models pack` through "
            "`python runtime/stream.py --flicker-stats`:", "",
            "| smoothing | flicker (x input) |", "|---|---:|",
            f"| per frame (`--temporal 0`) | {fmt(pf.get('ratio'), '.2f')} |",
            f"| the stream's default ({fmt(sm.get('temporal'), '.2g')}) | {fmt(sm.get('ratio'), '.2f')} |"]


def _sources_lines(sources: List[Dict[str, str]]) -> List[str]:
    return [f"- `{s['name']}`: {s['what']}. Terms: {s['terms']}." for s in sources] or ["- (none recorded)"]


def _limits(entry: Dict[str, Any]) -> List[str]:
    """Known limits: what the training data lacks, stated from the recorded sources and numbers."""
    names = {s["name"] for s in entry["recipe"].get("data_sources") or []}
    lines = []
    if names == {"procedural"}:
        lines.append("- **Trained on procedural box scenes only** (the procedural demo): on real photos it removes "
                     "little haze and can leave dark blotches. A development model; pack a real-data run for use.")
    if "frida2" in names and not names & {"clear_outdoor", "cityscapes4"}:
        lines.append("- **Outdoor balance**: outdoor training scenes are FRIDA2's synthetic roads only; real outdoor "
                     "photos are out of distribution (compare its FADE on real photos with the prior's below).")
    lines += [
        "- **Night fog** (headlights, street lamps, glow): no night scene in the training data; untested.",
        "- **Dense fog**: fog that hides the scene cannot be restored; the output stays grey where nothing is seen.",
        "- **Light haze / clear frames**: " + ("trained with clear frames as identity pairs and haze up to 20 km "
        "visibility; the `clear-photos` and `light-haze` rows above say how close it stays to such input. "
        if names & {"clear_outdoor", "cityscapes4"} else "no clear frame in the training data: the model dehazes "
        "every frame. ") + "`runtime/stream.py --bypass` passes frames it scores as clear through unchanged.",
        "- **Frame size**: the variant follows the frame's shorter side (see Files); frames far above 1080p run the "
        "1080p variant and see a smaller copy of the scene than it was trained on: downscale them first.",
        "- **Video**: per-frame output flickers (table above); the stream's default smoothing reduces it, camera pans "
        "are not motion-compensated.",
    ]
    return lines


def render_card(name: str, entry: Dict[str, Any]) -> str:
    """The card's Markdown: what it is, files, data and terms, recipe, quality, speed, flicker, limits, use."""
    a, r = entry["architecture"], entry["recipe"]
    lic = entry["licence"]
    variants = entry["variants"]
    lines = [f"# {name}", "", f"{entry['summary']}.", "",
             f"**Licence.** Code: {lic['code']}. Weights: {lic['weights']}.", "",
             "```python", "import runtime                      # numpy + onnxruntime, no torch",
             f"h = runtime.create(\"{name}\")       # variant chosen by frame size; \"{name}@1080\" pins one",
             "```", "",
             f"`python runtime/stream.py --model {name} --input VIDEO`, `edgehaze dehaze PHOTOS --out DIR` "
             f"(the FP32 checkpoint), `edgehaze eval --model {name} --data DIR`, `edgehaze export --checkpoint "
             f"{name} --target trt`. This card and `manifest.json` are written by `{r['pack_command']}`; do not edit "
             "them by hand.", "",
             "## What it is", "",
             f"- Backbone `{a['backbone']}` ({_kw(a.get('backbone_kwargs'))}), fusion `{_fusion(a.get('fusion'))}`, depth "
             f"encoder `{a.get('depth')}` ({_kw(a.get('depth_kwargs'))}) distilled from a depth-fused teacher.",
             f"- Internal scale {a['internal_scale']} (the network runs at 1/{a['internal_scale']} of the frame and "
             f"applies its correction at full resolution)" + (f"; the 1080p variant runs at 1/{a['scale_1920x1080']}."
                                                               if "1080" in variants else "; no 1080p variant."),
             f"- Parameters: {a['params'] / 1e6:.3f} M (depth encoder {a['depth_params'] / 1e6:.3f} M).",
             f"- Compute: {a['gmacs_640x480']:.3f} GMACs at 640x480 (scale {a['internal_scale']}), "
             f"{a['gmacs_1920x1080']:.3f} GMACs at 1920x1080 (scale {a['scale_1920x1080']}).", "",
             "## Files", "",
             "| variant | file | bytes | precision | internal scale | used for frames | input |",
             "|---|---|---:|---|---:|---|---|"]
    ordered = sorted(variants.items(), key=lambda kv: kv[1]["min_side"])
    for i, (key, v) in enumerate(ordered):
        nxt = ordered[i + 1][1]["min_side"] if i + 1 < len(ordered) else None
        when = (f"shorter side < {nxt} px" if v["min_side"] == 0 and nxt else
                f"shorter side >= {v['min_side']} px" if v["min_side"] else "all")
        inp = v["input"]
        lines.append(f"| `{name}@{key}` | `{v['file']['path']}` | {v['file']['size']} | {v['precision']} | "
                     f"{v['internal_scale']} | {when} | {inp['dtype']} {inp['layout']} {inp['channel_order']} "
                     f"{inp['range'][0]}-{inp['range'][1]} |")
    ck = entry["checkpoint"]
    lines.append(f"| FP32 checkpoint | `{ck['path']}` | {ck['size']} | fp32 | {a['internal_scale']} | "
                 "torch: `edgehaze dehaze`, `export`, fine-tuning | float RGB 0-1 |")
    for key, why in (entry.get("missing_variants") or {}).items():
        lines.append(f"\nNo `{key}` variant: {why}.")
    lines += ["", "sha256 of every file: `manifest.json` (checked whenever a file is loaded by name).", "",
              "## Training data and terms", "", *_sources_lines(r.get("data_sources") or []), "",
              "Test sets (never trained on): " + "; ".join(f"{k}: {v}" for k, v in _eval_terms(entry).items()) + ".",
              "", "## Recipe", "", "```bash", r["command"] + f"   # -> {r['run_dir']}", r["pack_command"], "```", "",
              f"Demo mode `{r['mode']}`; the whole configuration is `recipe.config` in `manifest.json`. Commit "
              f"`{r.get('commit')}`: {r.get('commit_note')}. Machine: {_machine(r.get('machine'))}, threads "
              f"{r.get('threads')}.", "",
              "## Quality (the packed run's report: same images, same run)", "",
              *quality_lines(entry.get("quality") or {}), "",
              "PSNR/SSIM against ground truth; halo: grey levels of local error within 6 px of strong edges; FADE and "
              "NIQE (lower is better) on real photos without ground truth. FP32 is the exported FP32 graph, INT8 the "
              "shipped `640` variant, both through the torch-free runtime. PSNR vs input: how far the output is "
              "from the hazy input (on `clear-photos` it is the PSNR column: 30 dB or more leaves a clear scene "
              "alone).", "", *_target_lines(entry.get("quality") or {}),
              f"INT8 against FP32 on the pack's probe frame: {entry['probe']['psnr_int8_vs_fp32']:.2f} dB PSNR "
              "(`tests/test_models_zoo.py` re-exports the shipped checkpoint and checks it).", "",
              "## Stream speed (`python runtime/stream.py`, the packed run's report)", "",
              *stream_lines(entry.get("stream") or []), "",
              "## Flicker", "", *flicker_lines(entry.get("flicker") or {}), "",
              "## Known limits", "", *_limits(entry), "",
              "## Intended use", "",
              "Research and non-commercial dehazing of camera frames, videos and photos on CPUs and edge devices "
              "(Jetson), and a starting point for fine-tuning on your own data. Not for safety decisions (driving, "
              "surveillance evidence): the output is an enhancement, not a measurement.", ""]
    return "\n".join(lines)


def _target_lines(quality: Dict[str, Any]) -> List[str]:
    """The project's quality targets checked on the packed run's test sets (none for a procedural run)."""
    from edgehaze.quality import target_lines

    rows = target_lines({k: v for k, v in quality.items() if not k.startswith(("synthetic", "procedural"))})
    return ["Targets (the INT8 student; README \"Targets\"):", "", *rows, ""] if rows else []


def _kw(kwargs: Optional[Dict[str, Any]]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (kwargs or {}).items()) or "defaults"


def _fusion(f: Any) -> str:
    """The fusion block's style (``lite``/``full``) from a build record that may hold its whole config."""
    return str(f.get("style", f)) if isinstance(f, dict) else str(f)


def _machine(m: Optional[Dict[str, Any]]) -> str:
    if not m:
        return "not recorded"
    return f"{m.get('processor')}, {m.get('cpu_count')} CPUs, onnxruntime {m.get('onnxruntime')}"


def _eval_terms(entry: Dict[str, Any]) -> Dict[str, str]:
    from edgehaze.model_zoo import EVAL_TERMS

    out = {}
    for set_name in entry.get("quality") or {}:
        key = next((k for k in EVAL_TERMS if set_name.startswith(k)), None)
        out[set_name] = EVAL_TERMS[key] if key else ("rendered by the run from its own test scenes"
                                                     if set_name.endswith("-test") else "see the data folder's terms")
    if any("real fog drive" == (s.get("clip") or "") for s in entry.get("stream") or []):
        out["fog drive (stream)"] = EVAL_TERMS["fog drive"]
    return out
