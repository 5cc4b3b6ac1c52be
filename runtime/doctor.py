"""``python runtime/stream.py --doctor``: what this machine can run, and what is silently missing.

On a Jetson the usual failures are invisible until a stream starts: pip's
OpenCV shadows JetPack's (no GStreamer: ``csi://`` fails), the CPU
onnxruntime shadows the Jetson GPU build (``auto`` quietly runs on the
CPU), tensorrt or cuda-python is absent (``.engine`` files cannot run).
The doctor prints OpenCV's build (GStreamer, GUI, FFmpeg, CUDA), the
GStreamer elements the stream tool uses, ONNX Runtime's providers and what
``auto`` picks, TensorRT and CUDA versions, the GPU, and the cameras, with
a WARNING line for each of those traps. It never imports torch.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .backends import GPU_PROVIDERS, available_providers
from .errors import RuntimeError_
from .gst import gst_has

Line = Tuple[str, str]  # ("info" | "warn", text)
GST_ELEMENTS = ("nvarguscamerasrc", "nvvidconv", "nvv4l2decoder", "nvv4l2h264enc", "nvv4l2h265enc", "nvjpegenc",
                "x264enc", "x265enc", "jpegenc", "rtspclientsink", "rtph264pay")


def opencv_build(info: str) -> Dict[str, str]:
    """The lines of ``cv2.getBuildInformation()`` the stream tool depends on: GStreamer, GUI, FFMPEG, CUDA, V4L."""
    out = {}
    for key, label in (("GStreamer", "GStreamer"), ("GUI", "GUI"), ("FFMPEG", "FFMPEG"), ("CUDA", "NVIDIA CUDA"),
                       ("V4L", "v4l/v4l2")):
        m = re.search(rf"^[ \t]*{re.escape(label)}:[ \t]*(\S.*)$", info, re.MULTILINE)
        out[key] = m.group(1).strip() if m else "NO"
    if out["GStreamer"] == "NO":  # OpenCV <= 4.1 (JetPack 4) lists GStreamer's parts below an empty header
        m = re.search(r"^[ \t]*GStreamer:[ \t]*\n[ \t]*base:[ \t]*(YES.*)$", info, re.MULTILINE)
        out["GStreamer"] = m.group(1).strip() if m else "NO"
    if out["GUI"] == "NO":  # older builds list the toolkits one by one
        toolkits = [t for t in ("GTK+", "QT", "Win32 UI", "Cocoa") if re.search(rf"^\s*{re.escape(t)}[^:]*:\s*YES", info, re.M)]
        out["GUI"] = ", ".join(toolkits) if toolkits else "NONE"
    return out


def dist_of(module: str) -> Optional[str]:
    """The pip distribution that provides ``module`` (None: a system package, e.g. JetPack's)."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    by_module = getattr(metadata, "packages_distributions", None)  # Python >= 3.10; JetPack 5 has 3.8
    if by_module is not None:
        dists = by_module().get(module) or []
    else:
        dists = [d.metadata["Name"] for d in metadata.distributions()  # RECORD as text: parsing it is slow
                 if module in (d.read_text("top_level.txt") or "").split()
                 or f"\n{module}/" in "\n" + (d.read_text("RECORD") or "")]
    return ", ".join(sorted(set(dists))) or None


def cameras(pattern: str = "/dev/video*", sysfs: str = "/sys/class/video4linux") -> List[str]:
    """``/dev/videoN (driver name)`` for every V4L2 node (CSI sensors on a Jetson appear here too)."""
    found = []
    for dev in sorted(glob.glob(pattern), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        name_file = Path(sysfs) / Path(dev).name / "name"
        try:
            name = name_file.read_text().strip()
        except OSError:
            name = "?"
        found.append(f"{dev} ({name})")
    return found


def auto_choice(providers: List[str], gpu_visible: bool) -> Line:
    """What ``provider=auto`` runs on, as a warning when that is the CPU."""
    if not providers:
        return ("warn", "onnxruntime is not installed: only .engine files can run (pip install the onnxruntime "
                        "build for this machine)")
    best = providers[0]
    if best in GPU_PROVIDERS:
        return ("info", f"provider auto -> {best}")
    hint = (" although a GPU is visible: this onnxruntime is the CPU build; install onnxruntime-gpu (on a Jetson "
            "the wheel for your JetPack, see runtime/README.md) and remove the CPU 'onnxruntime' package"
            if gpu_visible else " (no GPU provider in this onnxruntime and no GPU visible)")
    return ("warn", f"provider auto falls back to CPUExecutionProvider{hint}")


def gpu_visible() -> bool:
    """A GPU device node exists (desktop driver or Jetson's integrated GPU)."""
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl"))


def _jetson() -> List[Line]:
    lines = []
    for label, path in (("device", "/proc/device-tree/model"), ("L4T", "/etc/nv_tegra_release")):
        try:
            text = Path(path).read_text(errors="replace").strip("\0\n ")
        except OSError:
            continue
        lines.append(("info", f"{label}: {text.splitlines()[0] if text else '?'}"))
    return lines


def _opencv(gst: Callable[[str], Optional[bool]]) -> List[Line]:
    try:
        import cv2
    except ImportError as exc:
        return [("warn", f"OpenCV: not importable ({exc}); the stream tool needs it (JetPack's python3-opencv)")]
    build = opencv_build(cv2.getBuildInformation())
    dist = dist_of("cv2")
    lines = [("info", f"OpenCV {cv2.__version__} from {dist or 'the system (not pip)'}: "
                      + ", ".join(f"{k} {v}" for k, v in build.items()))]
    if not build["GStreamer"].upper().startswith("YES"):
        lines.append(("warn", "OpenCV has no GStreamer: csi:// input, hardware encoders and rtsp:// output are "
                              "unavailable" + (f" (this is pip's {dist}; on a Jetson pip uninstall {dist} so "
                                               "JetPack's OpenCV is used)" if dist else "")))
    else:
        have = {e: gst(e) for e in GST_ELEMENTS}
        known = {e: v for e, v in have.items() if v is not None}
        if known:
            lines.append(("info", "GStreamer elements: " + ", ".join(f"{e} {'yes' if v else 'no'}"
                                                                     for e, v in known.items())))
        else:
            lines.append(("info", "GStreamer elements: unknown (no PyGObject, no gst-inspect-1.0)"))
    if build["GUI"].upper() in ("NONE", "NO"):
        lines.append(("warn", "OpenCV has no GUI: display:// output is unavailable (write a file, rtsp:// or use --headless)"))
    return lines


def _onnxruntime() -> List[Line]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [auto_choice([], gpu_visible())]
    built = ort.get_available_providers()
    return [("info", f"onnxruntime {ort.__version__} ({dist_of('onnxruntime') or 'system'}): providers {built}"),
            auto_choice(available_providers(), gpu_visible())]


def _tensorrt_cuda() -> List[Line]:
    lines: List[Line] = []
    try:
        import tensorrt as trt

        lines.append(("info", f"TensorRT {trt.__version__}"))
    except ImportError:
        lines.append(("info", "TensorRT: not installed (.engine files and runtime/build_engine.py need it)"))
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        _, rt = cudart.cudaRuntimeGetVersion()
        _, drv = cudart.cudaDriverGetVersion()
        driver = f"driver supports {drv // 1000}.{drv % 1000 // 10}" if drv else "no CUDA driver"
        lines.append(("info", f"CUDA runtime {rt // 1000}.{rt % 1000 // 10} (cuda-python), {driver}"))
    except ImportError:
        lines.append(("info", "cuda-python: not installed (needed to run .engine files)"))
    except Exception as exc:  # a broken CUDA install: say so, do not stop the report
        lines.append(("warn", f"cuda-python cannot query CUDA ({exc})"))
    from .engines import capability_text, cuda_device

    try:
        cc, name = cuda_device(0)
        lines.append(("info", f"GPU 0: {name}, compute capability {capability_text(cc)}"))
    except RuntimeError_ as exc:
        lines.append(("info", f"GPU: none usable ({exc.message})"))
    return lines


def report(gst: Callable[[str], Optional[bool]] = gst_has) -> List[Line]:
    """Every line of the doctor's report, in order."""
    lines: List[Line] = [("info", f"Python {platform.python_version()} on {platform.machine()} ({sys.executable})")]
    lines += _jetson()
    try:
        import numpy

        lines.append(("info", f"numpy {numpy.__version__}"))
    except ImportError:
        lines.append(("warn", "numpy is not installed"))
    lines += _opencv(gst)
    lines += _onnxruntime()
    lines += _tensorrt_cuda()
    cams = cameras()
    lines.append(("info", "cameras: " + ("; ".join(cams) if cams else "none found (/dev/video*)")))
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        lines.append(("info", "display: DISPLAY/WAYLAND_DISPLAY unset (display:// needs one; use --headless)"))
    return lines


def main(out=None) -> int:
    """Print the report; 0 always (it informs, the WARNING lines say what to fix)."""
    out = out or sys.stdout
    for level, text in report():
        print(("WARNING: " if level == "warn" else "") + text, file=out)
    return 0
