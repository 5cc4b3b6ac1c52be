"""``edgehaze quickstart`` (``./dev quickstart``): the shipped model dehazes a hazy video, first thing.

Why this is the first command: a newcomer should see edgehaze dehaze within
minutes of cloning, with nothing trained and no data. The video is the real
fog drive (``$EDGEHAZE_SHARED/data/video/dvd_gopro_fog_frames``, 1920x1080)
when that folder exists, else a hazy camera pass over a procedurally
rendered scene (640x480); ``--input`` takes your own video or image folder.
It runs ``python runtime/stream.py`` without ``--model`` (the shipped default
model, the torch-free runtime a device runs) twice: once on a null sink for
the FPS, once writing the before|after video; then a contact sheet of four
moments, and the next commands. The training chain is ``./dev demo``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgehaze.errors import EdgehazeError

FOG_DRIVE = Path("data") / "video" / "dvd_gopro_fog_frames"


def pick_input(given: Optional[str], out: Path, environ: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """``{"uri", "kind"}``: ``--input``, else the real fog drive under ``$EDGEHAZE_SHARED``, else a procedural video."""
    env = os.environ if environ is None else environ
    if given:
        if not (Path(given).exists() or "://" in given or any(c in given for c in "*?[")):
            raise EdgehazeError(f"--input {given}: no such file or folder (a video, an image folder or a glob)")
        return {"uri": given, "kind": "your input"}
    shared = env.get("EDGEHAZE_SHARED")
    if shared and (Path(shared) / FOG_DRIVE).is_dir():
        frames = Path(shared) / FOG_DRIVE
        if any(frames.glob("frame_*_hazy.jpg")):
            return {"uri": str(frames / "frame_*_hazy.jpg"), "kind": f"the real fog drive ({frames})"}
    from edgehaze.demo import make_hazy_video

    video = make_hazy_video(out / "hazy.mp4", 90, (480, 640), seed=7, fps=15.0)
    return {"uri": video["path"], "kind": "a procedurally rendered hazy camera pass (640x480; set EDGEHAZE_SHARED "
                                          "for the real fog drive)"}


def stream(uri: str, output: str, stats: Path, threads: int, side_by_side: bool) -> Dict[str, Any]:
    """``python runtime/stream.py --input URI --output OUTPUT`` with no --model; its stats and log lines."""
    from edgehaze.demo import stream_tool

    cmd = [sys.executable, str(stream_tool()), "--input", uri, "--output", output, "--stats-json", str(stats),
           "--threads", str(threads), "--provider", "cpu", "--stats-interval", "0"]
    if side_by_side:
        cmd.append("--side-by-side")
    shown = " ".join(["python", "runtime/stream.py"] + [f"'{c}'" if "*" in c else c for c in cmd[2:]])
    print(f"$ {shown}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("[stream]")]
    for ln in lines:
        if "no --model" in ln or "variant" in ln or "done (" in ln or "error" in ln:
            print(f"  {ln}", flush=True)
    if done.returncode != 0 or not stats.is_file():
        tail = (lines or done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgehazeError(f"runtime/stream.py failed on {uri}: {tail}")
    return json.loads(stats.read_text(encoding="utf-8"))


def contact_sheet(video: Path, target: Path, rows: int = 4, width: int = 1280) -> Path:
    """``rows`` evenly spaced frames of the before|after video stacked, ``width`` px wide, written atomically."""
    import cv2

    from edgehaze.imageio import write_image

    cap = cv2.VideoCapture(str(video))
    frames: List[np.ndarray] = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    if not frames:
        raise EdgehazeError(f"{video}: OpenCV reads no frame back from the written video")
    picks = [frames[int(round(i))] for i in np.linspace(0, len(frames) - 1, min(rows, len(frames)))]
    h = int(round(picks[0].shape[0] * width / picks[0].shape[1]))
    sheet = np.concatenate([cv2.resize(f, (width, h), interpolation=cv2.INTER_AREA) for f in picks], axis=0)
    return write_image(target, np.ascontiguousarray(sheet[..., ::-1]))  # atomic; RGB


def run_quickstart(out: "str | Path" = "runs/quickstart", given: Optional[str] = None,
                   threads: int = 2) -> Dict[str, Any]:
    """Dehaze the quickstart video with the shipped default model; returns FPS, files and the model used."""
    import edgehaze.runtime as rt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        name = rt.default_model()
        rt.zoo.verify_model(name)
        about = rt.zoo.describe(name)
        licence = rt.zoo.read_manifest()["models"][name].get("licence") or {}
    except rt.RuntimeError_ as exc:
        raise EdgehazeError(exc.message) from None
    src = pick_input(given, out)
    print(f"edgehaze quickstart: the shipped model {about}\n  weights: {licence.get('weights')}\n"
          f"  input: {src['kind']}", flush=True)
    uri = src["uri"]
    speed = stream(uri, "null", out / "stats-null.json", threads, side_by_side=False)
    video = out / "dehazed-side-by-side.mp4"
    written = stream(uri, str(video), out / "stats-video.json", threads, side_by_side=True)
    sheet = contact_sheet(video, out / "contact_sheet.png")
    size = written.get("frame_size") or [0, 0]
    fps = speed.get("fps")
    print(f"\n{written.get('frames')} frames of {size[0]}x{size[1]}: {fps:.1f} FPS through runtime/stream.py "
          f"(null sink; {written.get('fps'):.1f} FPS writing the before|after video), {threads} threads on this CPU")
    print(f"before | after video: {video}\ncontact sheet:        {sheet}\n")
    print("next:\n"
          "  ./dev edgehaze dehaze my_photos/ --out dehazed/          # your photos, the same model (FP32)\n"
          "  .venv/bin/python runtime/stream.py --input /dev/video0    # a camera (--output out.mp4, --headless)\n"
          "  .venv/bin/python runtime/stream.py --input my_video.mp4 --output out.mp4 --side-by-side\n"
          "  ./dev edgehaze models                                    # the shipped models, their cards and licences\n"
          "  ./dev demo                                               # the training chain on this CPU, with its report")
    return {"model": name, "input": src, "fps": fps, "fps_writing": written.get("fps"), "frames": written.get("frames"),
            "frame_size": size, "video": str(video), "contact_sheet": str(sheet)}
