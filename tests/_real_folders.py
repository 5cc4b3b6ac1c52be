"""Shared by the tests of the real-data benchmark scripts: load a script from
benchmarks/ as a module, and a fake shared data folder with the synth output
``edgehaze synth --rgbd sots_indoor_train --rgbd frida2 --keep-pairs`` writes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"edgehaze_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def fake_real_folders(base: Path) -> dict:
    """``{"data": shared data folder (tests/test_demo_real.py), "synth": its synth output, "base": base}``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_demo_real import make_fake_data

    from edgehaze.data.rgbd_synth import load_source, make_rgbd_dataset

    data = make_fake_data(base / "shared" / "data")
    sources = [load_source(data / "sots_indoor_train", layout="pairs"), load_source(data / "frida2", layout="frida2")]
    make_rgbd_dataset(sources, base / "synth", variants=1, seed=0, val_every=2, keep_pairs=True, progress=False)
    return {"data": data, "synth": base / "synth", "base": base}
