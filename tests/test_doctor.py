"""``python runtime/stream.py --doctor`` (runtime/doctor.py): the report and its warnings."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from runtime.doctor import auto_choice, cameras, opencv_build  # noqa: E402

BLOCK_TORCH = "import sys, runpy; sys.modules['torch'] = None; sys.modules['edgehaze'] = None; "

JETSON_INFO = """
  GUI:                           GTK3
    GTK+:                        YES (ver 3.24.33)
  Video I/O:
    FFMPEG:                      YES
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    YES (linux/videodev2.h)
  NVIDIA CUDA:                   YES (ver 11.4, CUFFT CUBLAS)
"""
OLD_INFO = """
  GUI:
    GTK+ 2.x:                    YES (ver 2.24.32)
  Video I/O:
    GStreamer:
      base:                      YES (ver 1.14.5)
"""


def test_doctor_runs_here_without_torch_and_warns_about_the_cpu():
    code = BLOCK_TORCH + f"sys.argv = ['stream.py', '--doctor']; runpy.run_path({str(REPO / 'runtime' / 'stream.py')!r}, run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for words in ("Python ", "OpenCV ", "GStreamer", "GUI", "onnxruntime ", "providers", "TensorRT",
                  "cameras: "):
        assert words in out, f"{words!r} missing from:\n{out}"
    assert "WARNING: provider auto falls back to CPUExecutionProvider" in out  # this machine has no GPU provider
    assert "torch" not in r.stderr


def test_opencv_build_lines_are_read_from_both_layouts():
    new = opencv_build(JETSON_INFO)
    assert new["GStreamer"].startswith("YES") and new["GUI"] == "GTK3" and new["CUDA"].startswith("YES (ver 11.4")
    old = opencv_build(OLD_INFO)
    assert old["GUI"] == "GTK+" and old["GStreamer"] == "YES (ver 1.14.5)" and old["FFMPEG"] == "NO"
    assert opencv_build("  Video I/O:\n    GStreamer:                   NO\n")["GStreamer"] == "NO"


def test_auto_choice_warns_when_it_is_the_cpu():
    assert auto_choice(["TensorrtExecutionProvider", "CPUExecutionProvider"], True) == \
        ("info", "provider auto -> TensorrtExecutionProvider")
    level, text = auto_choice(["CPUExecutionProvider"], True)
    assert level == "warn" and "onnxruntime-gpu" in text and "CPU build" in text
    assert auto_choice([], False)[0] == "warn"


def test_cameras_are_listed_with_their_driver_names(tmp_path):
    (tmp_path / "dev").mkdir()
    for n in (0, 10, 2):
        (tmp_path / "dev" / f"video{n}").touch()
        (tmp_path / "sys" / f"video{n}").mkdir(parents=True)
        (tmp_path / "sys" / f"video{n}" / "name").write_text(f"cam {n}\n")
    got = cameras(str(tmp_path / "dev" / "video*"), str(tmp_path / "sys"))
    assert [g.split("/")[-1] for g in got] == ["video0 (cam 0)", "video2 (cam 2)", "video10 (cam 10)"]
    assert cameras(str(tmp_path / "none*")) == []


def test_package_of_a_module_also_on_python_38(monkeypatch):
    from importlib import metadata

    from runtime.doctor import dist_of

    assert dist_of("numpy") == "numpy" and dist_of("no_such_module_here") is None
    monkeypatch.delattr(metadata, "packages_distributions", raising=False)  # as on JetPack 5's Python 3.8
    assert dist_of("numpy") == "numpy" and dist_of("onnxruntime") == "onnxruntime"
