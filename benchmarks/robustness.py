"""The robustness matrix: every command against every relevant bad input.

    python benchmarks/robustness.py --out runs/robustness            # the whole matrix
    python benchmarks/robustness.py --out runs/robustness --fast     # the subset the test suite runs
    python benchmarks/robustness.py --out runs/robustness --only dehaze stream

Each *cell* runs one command (``edgehaze dehaze|eval|synth|train|distill|export``,
``python runtime/stream.py`` or the runtime API ``runtime.create/run``) on one
entry of the generated corpus (tests/robustness/corpus.py) as a subprocess
with a time limit. A cell ends in one of:

* ``handled``     exit 0 and the output is right (converted, tiled, or the
                  bad file skipped and counted);
* ``clean_error`` a non-zero exit whose error names the file or flag;
* ``failure``     anything else: a traceback, a hang, a partial file left in
                  the output folder, an earlier output changed, the password
                  of the stream URI printed, a pickle payload that ran, an
                  error that names nothing, or an outcome the cell forbids.

The report is ``OUT/report.md`` (a table) and ``OUT/robustness.json`` (every
cell's command, exit status, time, outcome and output tail).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HANDLED, CLEAN, FAILURE, SKIPPED = "handled", "clean_error", "failure", "skipped"
TRACEBACK = "Traceback (most recent call last)"
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".incomplete")


def _load_corpus_module():  # type: ignore[no-untyped-def]
    name = "_edgehaze_robustness_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "robustness" / "corpus.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


# ---------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One command on one corpus entry and what counts as correct."""

    id: str
    command: str                      # dehaze, eval, synth, train, distill, export, stream, api
    entry: str                        # corpus entry name
    args: List[str]                   # arguments after the program
    expect: Sequence[str] = (CLEAN,)  # outcomes that pass
    names: Sequence[str] = ()         # an error must mention one of these (file or flag)
    watch: List[Path] = field(default_factory=list)  # folders that must hold no partial file
    sentinel: Optional[Path] = None   # an earlier output that must stay byte-identical
    check: Optional[Callable[["Cell", "Result"], Optional[str]]] = None  # extra check when handled
    fast: bool = False                # part of the default test suite's subset
    timeout: float = 120.0
    kind: str = "cli"                 # cli (edgehaze ...), script (runtime/stream.py), api (python -c)
    needs: Optional[str] = None       # a module file the command needs (skipped while it is absent)

    def argv(self) -> List[str]:
        if self.kind == "cli":
            return [PY, "-m", "edgehaze", self.command, *self.args]
        if self.kind == "script":
            return [PY, str(REPO / "runtime" / "stream.py"), *self.args]
        return [PY, "-c", API_SNIPPET, *self.args]

    def shell(self) -> str:
        import shlex

        shown = ["python" if a == PY else a for a in self.argv()]
        if self.kind == "api":
            shown[2] = "<runtime API snippet>"
        return " ".join(shlex.quote(os.fsdecode(a) if isinstance(a, bytes) else a) for a in shown)


@dataclass
class Result:
    id: str
    command: str
    entry: str
    shell: str
    outcome: str
    rc: Optional[int]
    seconds: float
    reason: str
    output: str


#: runtime API cells: python -c API_SNIPPET ARTIFACT CASE; RuntimeError_ -> one line, exit 2
API_SNIPPET = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from runtime import api
from runtime.errors import RuntimeError_
path, case = sys.argv[1], sys.argv[2]
frames = {
    "ok": lambda: np.full((40, 56, 3), 120, np.uint8),
    "float32": lambda: np.zeros((40, 56, 3), np.float32),
    "rgba": lambda: np.zeros((40, 56, 4), np.uint8),
    "gray": lambda: np.zeros((40, 56), np.uint8),
    "strided": lambda: np.zeros((40, 112, 3), np.uint8)[:, ::2],
    "empty": lambda: np.zeros((0, 0, 3), np.uint8),
    "1x1": lambda: np.zeros((1, 1, 3), np.uint8),
    "huge": lambda: np.zeros((4000, 4000, 3), np.uint8),
    "list": lambda: [[[0, 0, 0]]],
}
try:
    h = api.create(path, {"threads": 1})
    frame = frames[case]()
    out = api.run(h, frame)
    api.close(h)
    print(f"ok {out.shape} {out.dtype}")
except RuntimeError_ as exc:
    print(f"error {exc}", file=sys.stderr)
    sys.exit(2)
"""


# ------------------------------------------------------------------ running
def _tree_state(folders: Sequence[Path]) -> dict:
    state = {}
    for folder in folders:
        if Path(folder).exists():
            for p in Path(folder).rglob("*"):
                if p.is_file():
                    state[str(p)] = p.stat().st_size
    return state


def _digest(path: Optional[Path]) -> Optional[str]:
    if path is None or not Path(path).exists():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _is_partial(name: str) -> bool:
    """Temp names of our atomic writers (.NAME.xxx.tmp, .NAME.partial.mp4) and common others."""
    return name.endswith(PARTIAL_SUFFIXES) or (name.startswith(".") and (".tmp" in name or ".partial" in name))


class _Timeout(Exception):
    pass


def _run_subprocess(cell: Cell) -> tuple:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO),
               TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    args = list(cell.argv())
    if cell.kind == "api":
        args.append(str(REPO))
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        return None, f"cannot start: {exc}", False, time.perf_counter() - t0
    try:
        out, err = proc.communicate(timeout=cell.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    text = out.decode("utf-8", "backslashreplace") + err.decode("utf-8", "backslashreplace")
    return proc.returncode, text, timed_out, time.perf_counter() - t0


def _run_inprocess(cell: Cell) -> tuple:
    """``edgehaze.cli.main(args)`` in this process (torch is imported once: the fast test subset)."""
    from edgehaze.cli import main

    buf_out, buf_err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    timed_out, rc = False, None

    def _alarm(signum, frame):  # noqa: ARG001
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, cell.timeout)
    try:
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            try:
                rc = main([cell.command, *cell.args])
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
            except _Timeout:
                timed_out = True
            except BaseException:  # what the user would see as a traceback
                buf_err.write(traceback.format_exc())
                rc = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # stdout of a real process is a pipe with strict UTF-8: surrogates (non-UTF-8 names) must not reach it
    text = buf_out.getvalue()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        buf_err.write(f"\n{TRACEBACK}:\nUnicodeEncodeError: stdout got a name that is not UTF-8\n")
    return rc, text + buf_err.getvalue(), timed_out, time.perf_counter() - t0


def run_cell(cell: Cell, corpus, inprocess: bool = False) -> Result:  # type: ignore[no-untyped-def]
    """Run one cell and judge it (see the module docstring)."""
    if cell.needs and not (REPO / cell.needs).exists():
        return Result(cell.id, cell.command, cell.entry, cell.shell(), SKIPPED, None, 0.0,
                      f"{cell.needs} does not exist yet", "")
    for folder in cell.watch:
        Path(folder).parent.mkdir(parents=True, exist_ok=True)
    before_digest = _digest(cell.sentinel)
    if inprocess and cell.kind == "cli":
        rc, text, timed_out, secs = _run_inprocess(cell)
    else:
        rc, text, timed_out, secs = _run_subprocess(cell)
    problems: List[str] = []
    if timed_out:
        problems.append(f"hang: no exit within {cell.timeout:.0f} s")
    if TRACEBACK in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:]
        problems.append(f"traceback ({last[0].strip()[:200] if last else ''})")
    if corpus.SECRET_VALUE in text:
        problems.append("the stream password was printed")
    if corpus.marker.exists():
        problems.append("the pickle payload ran (marker file created)")
    partial = [p for p in _tree_state(cell.watch) if _is_partial(Path(p).name)]
    if partial:
        problems.append(f"partial file(s) left: {', '.join(Path(p).name for p in partial[:3])}")
    if cell.sentinel is not None and _digest(cell.sentinel) != before_digest:
        problems.append(f"earlier output {cell.sentinel.name} was changed")
    if rc is not None and rc < 0:
        problems.append(f"killed by signal {-rc}")

    outcome = FAILURE
    if not problems:
        if rc == 0:
            issue = cell.check(cell, Result(cell.id, cell.command, cell.entry, "", "", rc, secs, "", text)) \
                if cell.check else None
            if issue:
                problems.append(issue)
            else:
                outcome = HANDLED
        else:
            lowered = text.lower()
            if cell.names and not any(n.lower() in lowered for n in cell.names):
                problems.append(f"exit {rc} but the error names none of {list(cell.names)}")
            elif not text.strip():
                problems.append(f"exit {rc} with no message at all")
            elif _error_tail_lines(text) > 1:
                problems.append(f"the error message spans {_error_tail_lines(text)} lines (one line expected)")
            else:
                outcome = CLEAN
    if outcome != FAILURE and outcome not in cell.expect:
        problems.append(f"expected {'/'.join(cell.expect)}, got {outcome}")
        outcome = FAILURE
    reason = "; ".join(problems) if problems else _summary_line(text, rc)
    return Result(cell.id, cell.command, cell.entry, cell.shell(), outcome, rc, round(secs, 2), reason,
                  text[-3000:])


_ERROR_MARKERS = (": error: ", "[stream] error ", "error [")


def _error_tail_lines(text: str) -> int:
    """Lines from the last error line (``edgehaze CMD: error: ...``, ``[stream] error ...``) to the end."""
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if any(m in lines[i] for m in _ERROR_MARKERS):
            return len([ln for ln in lines[i:] if ln.strip()])
    return 1


def _summary_line(text: str, rc: Optional[int]) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if rc:
        errs = [ln for ln in lines if "error" in ln.lower() or "cannot" in ln.lower() or "skipped" in ln.lower()]
        return (errs or lines or [""])[-1][:300]
    return (lines or ["(no output)"])[-1][:300]


# ------------------------------------------------------------------- checks
def same_size_output(expected_hw: tuple, name: str) -> Callable:
    def check(cell: Cell, _res: Result) -> Optional[str]:
        from edgehaze.imageio import read_image

        out = Path(cell.watch[0]) / name
        if not out.exists():
            return f"exit 0 but {out.name} was not written"
        got = read_image(out).shape[:2]
        return None if tuple(got) == tuple(expected_hw) else f"output is {got}, expected {tuple(expected_hw)}"
    return check


def files_exist(*rel: str) -> Callable:
    def check(cell: Cell, _res: Result) -> Optional[str]:
        missing = [r for r in rel if not (Path(cell.watch[0]) / r).exists()]
        return f"exit 0 but missing {missing}" if missing else None
    return check


def output_mentions(*tokens: str) -> Callable:
    def check(_cell: Cell, res: Result) -> Optional[str]:
        low = res.output.lower()
        return None if all(t.lower() in low for t in tokens) else f"exit 0 but the output does not mention {tokens}"
    return check


# ------------------------------------------------------------------- matrix
def build_cells(c, work: Path, huge: bool = True) -> List[Cell]:  # type: ignore[no-untyped-def]
    """The whole matrix over corpus ``c``; ``work`` receives every cell's outputs."""
    from edgehaze.imageio import read_image

    cells: List[Cell] = []
    good = str(c["good.ckpt"])

    def out(cell_id: str) -> Path:
        return work / cell_id.replace("/", "__")

    # ---- dehaze: every image entry
    image_cases = {
        "good.png": (HANDLED,), "rgba.png": (HANDLED,), "gray.png": (HANDLED,), "16bit.png": (HANDLED,),
        "palette.png": (HANDLED,), "exif_rot.jpg": (HANDLED,), "1x1.png": (HANDLED,), "3x5.png": (HANDLED,),
        "nonutf8": (HANDLED,), "truncated.png": (CLEAN,), "truncated.jpg": (CLEAN,), "empty.png": (CLEAN,),
        "text.png": (CLEAN,), "missing_file": (CLEAN,),
    }
    fast_images = {"rgba.png", "truncated.png", "empty.png", "exif_rot.jpg", "3x5.png", "nonutf8"}
    for name, expect in image_cases.items():
        cid = f"dehaze/{name}"
        path = Path(c[name])
        check = None
        if HANDLED in expect:
            check = same_size_output(read_image(path).shape[:2], f"{path.stem}.png")
        cells.append(Cell(cid, "dehaze", name, [str(path), "--checkpoint", good, "--out", str(out(cid))],
                          expect, names=(path.name, os.fsdecode(os.fsencode(path.name))), watch=[out(cid)],
                          check=check, fast=name in fast_images))
    if huge and "huge.png" in c:
        cid = "dehaze/huge.png"
        cells.append(Cell(cid, "dehaze", "huge.png", [str(c["huge.png"]), "--checkpoint", good, "--out",
                                                     str(out(cid)), "--threads", "1"],
                          (HANDLED, CLEAN), names=("huge", "--max-pixels", "--tile"), watch=[out(cid)],
                          check=same_size_output((8000, 8000), "huge_8000.png"), timeout=600))
        cid = "dehaze/huge.png--no-tile"
        cells.append(Cell(cid, "dehaze", "huge.png", [str(c["huge.png"]), "--checkpoint", good, "--out",
                                                     str(out(cid)), "--tile", "0"],
                          (CLEAN,), names=("--max-pixels",), watch=[out(cid)], timeout=300))
    cid = "dehaze/tile-too-small"
    cells.append(Cell(cid, "dehaze", "good.png", [str(c["good.png"]), "--checkpoint", good, "--out", str(out(cid)),
                                                 "--max-pixels", "100", "--tile", "100", "--tile-overlap", "33"],
                      (CLEAN,), names=("--tile",), watch=[out(cid)], fast=True))
    cid = "dehaze/tiled-small-budget"
    cells.append(Cell(cid, "dehaze", "3x5.png", [str(c["3x5.png"]), "--checkpoint", good, "--out", str(out(cid)),
                                                "--max-pixels", "4", "--tile", "96", "--tile-overlap", "32"],
                      (HANDLED,), watch=[out(cid)], check=same_size_output((3, 5), "3x5.png"), fast=True))
    # a mixed batch: the good file is written, the bad ones named and counted, exit 1
    cid = "dehaze/mixed-folder"
    cells.append(Cell(cid, "dehaze", "images/", [str(Path(c["good.png"]).parent), "--checkpoint", good,
                                                "--out", str(out(cid))],
                      (CLEAN,), names=("truncated.png",), watch=[out(cid)]))
    # an existing output is not overwritten without --overwrite
    cid = "dehaze/existing-output"
    sentinel = out(cid) / "good.png"
    sentinel.parent.mkdir(parents=True, exist_ok=True)
    sentinel.write_bytes(b"earlier output")
    cells.append(Cell(cid, "dehaze", "good.png", [str(c["good.png"]), "--checkpoint", good, "--out", str(out(cid))],
                      (HANDLED,), watch=[out(cid)], sentinel=sentinel, fast=True,
                      check=output_mentions("--overwrite")))
    # --out is an existing file / a folder that cannot be created
    cid = "dehaze/out-is-a-file"
    cells.append(Cell(cid, "dehaze", "good.png", [str(c["good.png"]), "--checkpoint", good, "--out", str(c["text.png"])],
                      (CLEAN,), names=("--out",), sentinel=Path(c["text.png"]), fast=True))
    cid = "dehaze/out-under-a-file"
    cells.append(Cell(cid, "dehaze", "good.png", [str(c["good.png"]), "--checkpoint", good, "--out",
                                                 str(Path(c["text.png"]) / "sub")],
                      (CLEAN,), names=("--out",)))
    # checkpoints
    ckpt_cases = ["foreign.ckpt", "mismatch.ckpt", "nan.ckpt", "truncated.ckpt", "payload.pth", "teacher_moved.ckpt"]
    for name in ckpt_cases:
        cid = f"dehaze/{name}"
        path = Path(c[name])
        cells.append(Cell(cid, "dehaze", name, [str(c["good.png"]), "--checkpoint", str(path), "--out", str(out(cid))],
                          (CLEAN,), names=(path.name, "--depth-weights"), watch=[out(cid)],
                          fast=name in {"payload.pth", "truncated.ckpt", "nan.ckpt"}))
    cid = "dehaze/missing_depth_weights"
    cells.append(Cell(cid, "dehaze", "missing_depth_weights",
                      [str(c["good.png"]), "--checkpoint", str(c["teacher_moved.ckpt"]), "--out", str(out(cid)),
                       "--depth-weights", str(c["missing_depth_weights"])],
                      (CLEAN,), names=(Path(c["missing_depth_weights"]).name, "--depth-weights"), watch=[out(cid)]))
    cid = "dehaze/missing-checkpoint"
    cells.append(Cell(cid, "dehaze", "missing_file", [str(c["good.png"]), "--checkpoint", str(c["missing_file"]),
                                                     "--out", str(out(cid))],
                      (CLEAN,), names=("does_not_exist",), watch=[out(cid)]))

    # ---- eval
    for name, skip in (("pairs_mismatch", False), ("pairs_mismatch", True),
                       ("pairs_missing_gt", False), ("pairs_missing_gt", True)):
        cid = f"eval/{name}" + ("--skip-bad" if skip else "")
        root = Path(c[name])
        args = ["--checkpoint", good, "--hazy", str(root / "hazy"), "--clear", str(root / "clear"),
                "--out", str(out(cid))] + (["--skip-bad"] if skip else [])
        cells.append(Cell(cid, "eval", name, args, (HANDLED,) if skip else (CLEAN,),
                          names=("a.png", "b.png", "--skip-bad"), watch=[out(cid)], fast=not skip and name == "pairs_mismatch"))
    cid = "eval/bad-images--skip-bad"
    cells.append(Cell(cid, "eval", "images/", ["--checkpoint", good, "--hazy", str(Path(c["good.png"]).parent),
                                              "--out", str(out(cid)), "--skip-bad"],
                      (HANDLED,), watch=[out(cid)]))
    cid = "eval/bad-images"
    cells.append(Cell(cid, "eval", "images/", ["--checkpoint", good, "--hazy", str(Path(c["good.png"]).parent),
                                              "--out", str(out(cid))],
                      (CLEAN,), names=("truncated", "empty.png", "text.png", "--skip-bad"), watch=[out(cid)]))
    nonutf8_dir = str(Path(c["nonutf8"]).parent)
    cid = "eval/nonutf8-name"
    cells.append(Cell(cid, "eval", "nonutf8", ["--checkpoint", good, "--hazy", nonutf8_dir, "--out", str(out(cid)),
                                              "--save-images"],
                      (HANDLED,), watch=[out(cid)], check=files_exist("summary.json"), fast=True))
    cid = "synth/nonutf8-name"
    cells.append(Cell(cid, "synth", "nonutf8", ["--clear", nonutf8_dir, "--depth-model", "tiny", "--out", str(out(cid))],
                      (HANDLED,), watch=[out(cid)]))
    for name in ("truncated.ckpt", "foreign.ckpt", "payload.pth"):
        cid = f"eval/{name}"
        root = Path(c["pairs_missing_gt"])
        cells.append(Cell(cid, "eval", name, ["--checkpoint", str(c[name]), "--hazy", str(root / "hazy"),
                                             "--out", str(out(cid))],
                          (CLEAN,), names=(Path(c[name]).name,), watch=[out(cid)]))

    # ---- synth
    images = str(Path(c["good.png"]).parent)
    cid = "synth/bad-images"
    cells.append(Cell(cid, "synth", "images/", ["--clear", images, "--depth-model", "tiny", "--out", str(out(cid))],
                      (CLEAN,), names=("truncated", "empty.png", "text.png", "--skip-bad"), watch=[out(cid)]))
    cid = "synth/bad-images--skip-bad"
    cells.append(Cell(cid, "synth", "images/", ["--clear", images, "--depth-model", "tiny", "--out", str(out(cid)),
                                               "--skip-bad"],
                      (HANDLED,), watch=[out(cid)]))
    cid = "synth/missing_depth_weights"
    cells.append(Cell(cid, "synth", "missing_depth_weights",
                      ["--clear", images, "--depth-model", "dav2-s", "--depth-weights", str(c["missing_depth_weights"]),
                       "--out", str(out(cid))],
                      (CLEAN,), names=(Path(c["missing_depth_weights"]).name, "--depth-weights"), watch=[out(cid)],
                      fast=True))
    cid = "synth/payload.pth"
    cells.append(Cell(cid, "synth", "payload.pth",
                      ["--clear", images, "--depth-model", "dav2-s", "--depth-weights", str(c["payload.pth"]),
                       "--out", str(out(cid))],
                      (CLEAN,), names=("payload.pth",), watch=[out(cid)]))
    cid = "synth/missing-depth-model-weights"
    cells.append(Cell(cid, "synth", "(no --depth-weights)",
                      ["--clear", images, "--depth-model", "dav2-s", "--out", str(out(cid))],
                      (CLEAN,), names=("--depth-weights",), watch=[out(cid)]))
    cid = "synth/procedural-3x5"
    cells.append(Cell(cid, "synth", "3x5 size", ["--procedural", "2", "--size", "3", "5", "--out", str(out(cid))],
                      (HANDLED, CLEAN), names=("--size",), watch=[out(cid)]))

    # ---- train
    for name in ("unknown_key.yaml", "wrong_type.yaml"):
        cid = f"train/{name}"
        key = "learning_rate_typo" if name.startswith("unknown") else "lr"
        cells.append(Cell(cid, "train", name, ["--config", str(c[name])], (CLEAN,), names=(key,),
                          watch=[Path(c.root) / "train_runs"], fast=name.startswith("unknown"), timeout=180,
                          needs="edgehaze/cli/train.py"))
    cid = "train/missing-config"
    cells.append(Cell(cid, "train", "missing_file", ["--config", str(c["missing_file"])], (CLEAN,),
                      names=("does_not_exist",), needs="edgehaze/cli/train.py"))
    cid = "train/bad-override"
    cells.append(Cell(cid, "train", "override", ["--config", str(c["unknown_key.yaml"]).replace("unknown_key", "wrong_type"),
                                                 "train.lr=0.001", "train.batch_size=many"],
                      (CLEAN,), names=("batch_size",), needs="edgehaze/cli/train.py", timeout=180))
    cid = "train/payload_run--resume"
    cells.append(Cell(cid, "train", "payload_run", ["--resume", str(c["payload_run"])], (CLEAN,),
                      names=("last.state.pt", "payload_run"), watch=[Path(c["payload_run"])], timeout=300,
                      needs="edgehaze/cli/train.py"))
    cid = "train/missing_depth_weights"
    cells.append(Cell(cid, "train", "missing_depth_weights",
                      ["--config", str(c["wrong_type.yaml"]), "train.lr=0.001", "model.depth=dav2-s",
                       f"model.depth_weights={c['missing_depth_weights']}"],
                      (CLEAN,), names=(Path(c["missing_depth_weights"]).name, "depth_weights"), timeout=300,
                      watch=[Path(c.root) / "train_runs"], needs="edgehaze/cli/train.py"))

    # ---- distill
    dq = str(REPO / "configs" / "distill_quickstart.yaml")
    for name in ("distill_unknown_key.yaml", "distill_wrong_type.yaml"):
        if name in c:
            cid = f"distill/{name}"
            cells.append(Cell(cid, "distill", name, ["--config", str(c[name]), "--teacher-ckpt", good,
                                                     "--out", str(out(cid))],
                              (CLEAN,), names=("distill_typo", "steps"), watch=[out(cid)], timeout=180,
                              needs="edgehaze/cli/distill.py"))
    for name in ("truncated.ckpt", "foreign.ckpt", "nan.ckpt", "payload.pth", "good.ckpt", "teacher_moved.ckpt"):
        cid = f"distill/{name}"
        cells.append(Cell(cid, "distill", name, ["--config", dq, "--teacher-ckpt", str(c[name]),
                                                 "--data", str(Path(c.root) / "distill_data"), "--out", str(out(cid)),
                                                 "--steps", "1", "--no-progress"],
                          (CLEAN,), names=(Path(c[name]).name, "--teacher-ckpt", "--depth-weights"),
                          watch=[out(cid)], timeout=300, needs="edgehaze/cli/distill.py"))
    cid = "distill/missing-teacher"
    cells.append(Cell(cid, "distill", "(none)", ["--config", dq, "--out", str(out(cid))], (CLEAN,),
                      names=("--teacher-ckpt", "teacher"), watch=[out(cid)], needs="edgehaze/cli/distill.py"))

    # ---- export (--checkpoint CKPT --out DIR --name STEM)
    for name in ("truncated.ckpt", "foreign.ckpt", "nan.ckpt", "mismatch.ckpt", "payload.pth", "teacher_moved.ckpt",
                 "missing_file"):
        cid = f"export/{name}"
        cells.append(Cell(cid, "export", name, ["--checkpoint", str(c[name]), "--out", str(out(cid)), "--name", "model"],
                          (CLEAN,), names=(Path(c[name]).name, "--depth-weights"), watch=[out(cid)], timeout=300,
                          needs="edgehaze/cli/export.py", fast=name == "truncated.ckpt"))
    cid = "export/good.ckpt"
    cells.append(Cell(cid, "export", "good.ckpt", ["--checkpoint", good, "--out", str(out(cid)), "--name", "model"],
                      (HANDLED,), watch=[out(cid)], check=files_exist("model.onnx", "model.json"), timeout=300,
                      needs="edgehaze/cli/export.py"))
    cid = "export/int8-without-calib"
    cells.append(Cell(cid, "export", "(no --calib)", ["--checkpoint", good, "--int8", "--out", str(out(cid))],
                      (CLEAN,), names=("--calib",), watch=[out(cid)], timeout=300, needs="edgehaze/cli/export.py"))
    cid = "export/int8-bad-calib-images"
    cells.append(Cell(cid, "export", "images/", ["--checkpoint", good, "--int8", "--method", "ptq", "--calib", images,
                                                "--out", str(out(cid)), "--name", "model"],
                      (CLEAN, HANDLED), names=("truncated", "empty.png", "text.png", "--calib"), watch=[out(cid)],
                      timeout=300, needs="edgehaze/cli/export.py"))
    cid = "export/imgsz-1x1"
    cells.append(Cell(cid, "export", "--imgsz 1 1", ["--checkpoint", good, "--imgsz", "1", "1", "--out", str(out(cid)),
                                                    "--name", "model"],
                      (CLEAN, HANDLED), names=("--imgsz",), watch=[out(cid)], timeout=300, needs="edgehaze/cli/export.py"))

    # ---- runtime/stream.py (torch-free subprocesses)
    art = str(c["artifact.onnx"])
    stream_cases = [
        ("stream/not_onnx.onnx", "not_onnx.onnx", ["--model", str(c["not_onnx.onnx"]), "--input", images],
         (CLEAN,), ("not_onnx.onnx",), True),
        ("stream/wrong_contract.onnx", "wrong_contract.onnx", ["--model", str(c["wrong_contract.onnx"]),
                                                               "--input", images], (CLEAN,), ("wrong_contract",), False),
        ("stream/missing-model", "missing_file", ["--model", str(c["missing_file"]), "--input", images],
         (CLEAN,), ("does_not_exist",), False),
        ("stream/rtsp", "rtsp", ["--model", art, "--input", c["rtsp"], "--input-timeout", "2", "--max-reopen", "1",
                                 "--reopen-backoff", "0.1", "--headless", "--output", "null"],
         (CLEAN,), ("127.0.0.1", "rtsp"), True),
        ("stream/missing-input", "missing_file", ["--model", art, "--input", str(c["missing_file"]), "--headless"],
         (CLEAN,), ("does_not_exist",), False),
    ]
    for cid, entry, args, expect, names, fast in stream_cases:
        cells.append(Cell(cid, "stream", entry, args + ["--stats-interval", "0"], expect, names=names, kind="script",
                          fast=fast, timeout=90))
    frames_dir = Path(c.root) / "stream_frames"  # valid 48x64 frames + undecodable files
    frames_dir.mkdir(exist_ok=True)
    import shutil

    for name in ("truncated.png", "empty.png", "text.png", "truncated.jpg"):
        shutil.copy(c[name], frames_dir / f"b_{name}")
    for i in range(3):
        shutil.copy(c["rgba.png"], frames_dir / f"a{i}.png")
    cid = "stream/tiny-frame-in-folder"
    cells.append(Cell(cid, "stream", "images/", ["--model", art, "--input", images, "--output", str(out(cid)) + "/",
                                                 "--headless", "--stats-interval", "0"],
                      (CLEAN, HANDLED), names=("1x1",), watch=[out(cid)], kind="script", timeout=90))
    cid = "stream/bad-image-folder"
    cells.append(Cell(cid, "stream", "stream_frames/", ["--model", art, "--input", str(frames_dir), "--output", str(out(cid)) + "/",
                                                 "--headless", "--stats-interval", "0"],
                      (HANDLED,), watch=[out(cid)], kind="script", timeout=90, fast=True,
                      check=output_mentions("undecodable")))
    cid = "stream/clip.mp4"
    cells.append(Cell(cid, "stream", "clip.mp4", ["--model", art, "--input", str(c["clip.mp4"]), "--output",
                                                  str(out(cid) / "out.mp4"), "--headless", "--stats-interval", "0",
                                                  "--stats-json", str(out(cid) / "stats.json")],
                      (HANDLED,), watch=[out(cid)], kind="script", timeout=90,
                      check=files_exist("out.mp4", "stats.json")))

    # ---- runtime API
    api_cases = [("not_onnx.onnx", "ok", (CLEAN,), ("not_onnx.onnx",)),
                 ("wrong_contract.onnx", "ok", (CLEAN,), ("wrong_contract",)),
                 ("missing_file", "ok", (CLEAN,), ("does_not_exist",)),
                 ("artifact.onnx", "ok", (HANDLED,), ()),
                 ("artifact.onnx", "float32", (CLEAN,), ("uint8",)),
                 ("artifact.onnx", "rgba", (CLEAN,), ("[H, W, 3]", "shape")),
                 ("artifact.onnx", "gray", (CLEAN,), ("[H, W, 3]", "shape")),
                 ("artifact.onnx", "strided", (CLEAN,), ("contiguous",)),
                 ("artifact.onnx", "empty", (CLEAN,), ("empty",)),
                 ("artifact.onnx", "1x1", (CLEAN, HANDLED), ("shape range", "1x1")),
                 ("artifact.onnx", "huge", (CLEAN, HANDLED), ("shape range", "4000x4000")),
                 ("artifact.onnx", "list", (CLEAN,), ("numpy",))]
    for entry, case, expect, names in api_cases:
        cid = f"api/{entry}/{case}"
        cells.append(Cell(cid, "api", entry, [str(c[entry]), case], expect, names=names, kind="api",
                          fast=case in ("float32", "ok") and entry in ("not_onnx.onnx", "artifact.onnx"), timeout=90))
    return cells


# ------------------------------------------------------------------- report
def summarise(results: Sequence[Result]) -> dict:
    tried = [r for r in results if r.outcome != SKIPPED]
    return {"cells": len(results), "tried": len(tried),
            "handled": sum(r.outcome == HANDLED for r in tried),
            "clean_errors": sum(r.outcome == CLEAN for r in tried),
            "failures": sum(r.outcome == FAILURE for r in tried),
            "skipped": len(results) - len(tried)}


def write_report(results: Sequence[Result], out: Path, corpus_notes: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    by_cmd: dict = {}
    for r in results:
        row = by_cmd.setdefault(r.command, {HANDLED: 0, CLEAN: 0, FAILURE: 0, SKIPPED: 0})
        row[r.outcome] += 1
    payload = {"summary": summary, "by_command": by_cmd, "corpus": corpus_notes,
               "cells": [asdict(r) for r in results]}
    from edgehaze.fsutil import atomic_write

    atomic_write(out / "robustness.json",
                       lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    lines = ["# Robustness matrix", "",
             f"Cells tried: **{summary['tried']}** — handled **{summary['handled']}**, clean errors "
             f"**{summary['clean_errors']}**, failures **{summary['failures']}**"
             + (f" (skipped, command absent: {summary['skipped']})" if summary["skipped"] else ""), "",
             "| command | handled | clean errors | failures | skipped |", "|---|---|---|---|---|"]
    for cmd, row in by_cmd.items():
        lines.append(f"| {cmd} | {row[HANDLED]} | {row[CLEAN]} | {row[FAILURE]} | {row[SKIPPED]} |")
    lines += ["", "| cell | outcome | exit | s | detail | command |", "|---|---|---|---|---|---|"]
    for r in results:
        detail = r.reason.replace("|", "\\|").replace("\n", " ")[:240]
        cmd = r.shell.replace("|", "\\|")
        mark = "**FAILURE**" if r.outcome == FAILURE else r.outcome
        lines.append(f"| {r.id} | {mark} | {r.rc} | {r.seconds} | {detail} | `{cmd[:400]}` |")
    failures = [r for r in results if r.outcome == FAILURE]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            lines += [f"### {r.id}", "", f"`{r.shell}`", "", f"{r.reason}", "", "```", r.output[-1500:].strip(), "```", ""]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "report.md",
                       lambda tmp: Path(tmp).write_bytes(text.encode("utf-8", "backslashreplace")))
    return summary


def run_matrix(out: Path, *, fast: bool = False, only: Optional[Sequence[str]] = None, jobs: int = 2,
               huge: bool = True, inprocess: bool = False, corpus_dir: Optional[Path] = None,
               log: Callable[[str], None] = print) -> tuple:
    """Build the corpus, run the cells, write the report; returns ``(summary, results)``."""
    corpus_mod = _load_corpus_module()
    out = Path(out)
    corpus_root = Path(corpus_dir) if corpus_dir else out / "corpus"
    import shutil

    for stale in (corpus_root, out / "work"):
        shutil.rmtree(stale, ignore_errors=True)
    c = corpus_mod.build_corpus(corpus_root, huge=huge and not fast)
    c.SECRET_VALUE = corpus_mod.SECRET
    cells = build_cells(c, out / "work", huge=huge and not fast)
    if fast:
        cells = [cell for cell in cells if cell.fast]
    if only:
        cells = [cell for cell in cells if cell.command in only]
    log(f"robustness: {len(cells)} cells, corpus in {corpus_root}")

    def one(cell: Cell) -> Result:
        res = run_cell(cell, c, inprocess=inprocess)
        log(f"  {res.outcome:12s} {res.seconds:7.2f}s  {cell.id}  {res.reason[:150]}")
        return res

    if inprocess or jobs <= 1:
        results = [one(cell) for cell in cells]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, cells))
    summary = write_report(results, out, dict(c.notes))
    return summary, results


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/robustness", help="report folder (corpus and outputs go under it)")
    p.add_argument("--fast", action="store_true", help="only the cells of the default test suite")
    p.add_argument("--only", nargs="*", default=None, help="commands to run (dehaze eval synth train distill export stream api)")
    p.add_argument("--jobs", type=int, default=2, help="cells run at once")
    p.add_argument("--no-huge", action="store_true", help="skip the 8000x8000 image cells")
    a = p.parse_args(argv)
    summary, _ = run_matrix(Path(a.out), fast=a.fast, only=a.only, jobs=a.jobs, huge=not a.no_huge)
    print(json.dumps(summary))
    print(f"report: {Path(a.out) / 'report.md'}")
    return 1 if summary["failures"] else 0


# ---------------------------------------------------------------- as pytest
def test_fast_subset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The fast cells (also run by tests/robustness/test_matrix.py)."""
    summary, results = run_matrix(tmp_path, fast=True, inprocess=True, log=lambda _m: None)
    bad = [f"{r.id}: {r.reason}" for r in results if r.outcome == FAILURE]
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    sys.exit(main())
