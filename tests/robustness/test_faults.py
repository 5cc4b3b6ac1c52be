"""Faults: SIGKILL in the middle of a write, a full disk, and an unsafe pickle.

The property every writer promises (edgehaze.fsutil.atomic_write, the stream
tool's video sink): whatever happens, the file under the final name is the
previous complete one or the new complete one, never half of either.
"""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgehaze.checkpoint import load_dehazer, save_dehazer
from edgehaze.errors import CheckpointError, EdgehazeError
from edgehaze.imageio import read_image, write_image

from .corpus import build_corpus, tiny_model

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{HERE}")


def _kill_when_ready(args: list, ready: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Start ``args``; SIGKILL it as soon as ``ready`` exists (the child is mid-write)."""
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before reaching the write:\n{err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("child never reached the write")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _visible(folder: Path) -> set:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"), configs=False)


# ---------------------------------------------------------------- SIGKILL
SLOW_SAFETENSORS = r"""
import sys, time
import safetensors.torch as st
from corpus import tiny_model
from edgehaze.checkpoint import save_dehazer
path, ready = sys.argv[1], sys.argv[2]
real = st.save_file
def half_then_hang(state, tmp, metadata=None):
    real(state, tmp, metadata=metadata)
    data = open(tmp, "rb").read()
    with open(tmp, "wb") as fh:          # half of the new file is on disk ...
        fh.write(data[: len(data) // 2])
    open(ready, "w").close()             # ... and the parent kills us now
    time.sleep(120)
st.save_file = half_then_hang
save_dehazer(path, tiny_model(seed=1))
"""


def test_sigkill_mid_checkpoint_write_keeps_previous(tmp_path):
    path = tmp_path / "model.safetensors"
    previous = tiny_model(seed=0)
    save_dehazer(path, previous)
    before = _sha(path)
    _kill_when_ready([sys.executable, "-c", SLOW_SAFETENSORS, str(path), str(tmp_path / "ready")], tmp_path / "ready")
    assert _sha(path) == before, "the checkpoint under the final name changed"
    model, _ = load_dehazer(path)
    for (k, a), b in zip(previous.persistent_state_dict().items(), model.persistent_state_dict().values()):
        assert torch.equal(a, b), k
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("model.safetensors", "ready")]
    assert all(n.startswith(".model.safetensors.") and n.endswith(".tmp") for n in leftovers), leftovers
    save_dehazer(path, tiny_model(seed=2))  # the next save still works over the old one
    load_dehazer(path)


SLOW_ONNX_EXPORT = r"""
import sys, time
import onnx
from edgehaze.cli import main
ckpt, out, ready = sys.argv[1], sys.argv[2], sys.argv[3]
real = onnx.save
def half_then_hang(model, f, *a, **kw):
    real(model, f, *a, **kw)
    if str(f).endswith(".tmp"):
        data = open(f, "rb").read()
        with open(f, "wb") as fh:
            fh.write(data[: len(data) // 2])
        open(ready, "w").close()
        time.sleep(120)
onnx.save = half_then_hang
sys.exit(main(["export", "--checkpoint", ckpt, "--out", out, "--name", "model"]))
"""


@pytest.mark.skipif(not (REPO / "edgehaze" / "cli" / "export.py").exists(), reason="export command not present")
def test_sigkill_mid_export_keeps_previous_artifact(tmp_path, corpus):
    from edgehaze.cli import main

    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(corpus["good.ckpt"]), "--out", str(out), "--name", "model"]) == 0
    onnx_path = out / "model.onnx"
    before = {p.name: _sha(p) for p in out.iterdir() if not p.name.startswith(".")}
    assert "model.onnx" in before
    _kill_when_ready([sys.executable, "-c", SLOW_ONNX_EXPORT, str(corpus["good.ckpt"]), str(out),
                      str(tmp_path / "ready")], tmp_path / "ready")
    after = {p.name: _sha(p) for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before, "a visible export file changed or appeared after SIGKILL"
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(onnx_path)))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: np.full((1, 32, 48, 3), 100, np.uint8)})[0]
    assert y.shape == (1, 32, 48, 3) and y.dtype == np.uint8


def test_sigkill_mid_video_keeps_previous_video(tmp_path, corpus):
    """The stream tool writes .NAME.partial.mp4 and renames on close: a kill leaves the old video."""
    import cv2

    out = tmp_path / "out.mp4"
    stream = [sys.executable, str(REPO / "runtime" / "stream.py"), "--model", str(corpus["artifact.onnx"]),
              "--headless", "--stats-interval", "0", "--output", str(out)]
    done = subprocess.run(stream + ["--input", str(corpus["clip.mp4"])], cwd=REPO, env=_env(),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    before = _sha(out)
    partial = tmp_path / ".out.partial.mp4"
    proc = subprocess.Popen(stream + ["--input", str(corpus["clip.mp4"]), "--input-loop", "-1", "--input-rate", "50"],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the stream never started writing"
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _sha(out) == before
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 6
    assert _visible(tmp_path) == {"out.mp4"}


# ---------------------------------------------------------------- full disk
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_on_checkpoint_save_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_dehazer(path, tiny_model(seed=0))
    before = _sha(path)
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises((OSError, EdgehazeError)) as info:
        save_dehazer(path, tiny_model(seed=1))
    assert "space" in str(info.value).lower()
    monkeypatch.undo()
    assert _sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # temp file removed


def test_full_disk_on_image_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    write_image(path, np.full((8, 8, 3), 0.5, np.float32))
    before = _sha(path)
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises((OSError, EdgehazeError)):
        write_image(path, np.zeros((8, 8, 3), np.float32))
    monkeypatch.undo()
    assert _sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_full_disk_in_dehaze_is_one_clean_line(tmp_path, corpus, monkeypatch, capsys):
    from edgehaze.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "good.png").write_bytes(b"earlier")
    monkeypatch.setattr(os, "replace", _enospc)
    rc = main(["dehaze", str(corpus["good.png"]), "--checkpoint", str(corpus["good.ckpt"]), "--out", str(out),
               "--overwrite"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "good.png" in lines[0] and "space" in lines[0].lower(), err
    assert (out / "good.png").read_bytes() == b"earlier"
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


# ---------------------------------------------------------------- pickle payload
def test_pickle_payload_never_runs(corpus):
    """Every loader refuses the payload; the same file under plain pickle WOULD run it (control)."""
    from edgehaze.models.depth.dav2_convert import read_state_dict
    from edgehaze.train.state import load_state

    marker = corpus.marker
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="payload.pth"):
        read_state_dict(corpus["payload.pth"])
    with pytest.raises(CheckpointError, match="payload.pth"):
        load_dehazer(corpus["payload.pth"])
    with pytest.raises(CheckpointError, match="last.state.pt"):
        load_state(Path(corpus["payload_run"]) / "rgb" / "last.state.pt")
    from edgehaze.models.backbones.dehazeformer import load_official_dehazeformer_state

    with pytest.raises(CheckpointError, match="payload.pth"):
        load_official_dehazeformer_state(corpus["payload.pth"])
    assert not marker.exists(), "a loader executed the pickle payload"
    # control: the payload is live, so the test above could fail
    torch.load(str(corpus["payload.pth"]), weights_only=False)
    assert marker.exists()
    marker.unlink()
