"""Run logs: CSV files (always), TensorBoard (when installed).

``train_log.csv`` gets one row per logged step (stage, step, epoch, loss,
each loss term, lr, elapsed time); ``val_log.csv`` one row per validation.
On ``--resume`` the rows written after the checkpoint being resumed are
dropped, so the log of a resumed run reads like an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from edgehaze.fsutil import atomic_write

_TB_NOTE_SHOWN = False


class CsvLog:
    """Append-only CSV whose header grows when a row brings new columns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.header: List[str] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh)
                self.header = next(reader, [])

    def rows(self) -> List[Dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def _rewrite(self, header: List[str], rows: List[Dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
        data = buf.getvalue().encode("utf-8")
        atomic_write(self.path, lambda tmp: Path(tmp).write_bytes(data))
        self.header = header

    def append(self, row: Dict[str, Any]) -> None:
        row = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in row if k not in self.header]
        if new or not self.path.is_file():
            self._rewrite(self.header + new, self.rows() + [row])
            return
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self.header, extrasaction="ignore", lineterminator="\n").writerow(row)

    def keep_only(self, keep: Callable[[Dict[str, str]], bool]) -> None:
        """Drop the rows ``keep`` rejects (used when resuming)."""
        if self.path.is_file():
            self._rewrite(self.header, [r for r in self.rows() if keep(r)])


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: resumed and uninterrupted runs compare exactly
    return v


def tensorboard_writer(log_dir: Path) -> Optional[Any]:
    """A SummaryWriter when tensorboard is installed, else None (one-line note)."""
    global _TB_NOTE_SHOWN
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or tensorboard's own import errors
        if not _TB_NOTE_SHOWN:
            print("edgehaze train: tensorboard is not installed; logging to CSV only (pip install edgehaze[tensorboard])")
            _TB_NOTE_SHOWN = True
        return None
    return SummaryWriter(log_dir=str(log_dir))
