"""edgehaze: depth-guided dehazing taken to the edge.

Public entry points are imported lazily so that ``import edgehaze`` stays
cheap (the CLI imports torch only for commands that need it).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["build_dehazer", "load_dehazer", "save_dehazer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "build_dehazer":
        from edgehaze.models.dehazer import build_dehazer

        return build_dehazer
    if name in ("load_dehazer", "save_dehazer"):
        from edgehaze import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
