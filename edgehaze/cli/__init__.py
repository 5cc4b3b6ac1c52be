"""The ``edgehaze`` command line.

Each sub-command lives in its own module in this package and defines
``add_parser(subparsers)`` which registers it (setting ``func``). Modules are
discovered automatically, so a command exists exactly when its module does.
User errors (:class:`edgehaze.errors.EdgehazeError`) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

from edgehaze.errors import EdgehazeError


def build_parser() -> argparse.ArgumentParser:
    from edgehaze import __version__

    parser = argparse.ArgumentParser(
        prog="edgehaze",
        description="Depth-guided image dehazing, from teacher training to an edge runtime.",
    )
    parser.add_argument("--version", action="version", version=f"edgehaze {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def _quiet_third_party_logs() -> None:
    """Silence import-time deprecation chatter from torch/torchao/transformers."""
    import logging
    import warnings

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Optional[List[str]] = None) -> int:
    _quiet_third_party_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except EdgehazeError as exc:
        print(f"edgehaze {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # disk full, permission denied, read-only file system...: the file
        # and the reason on one line (atomic writes left earlier files intact)
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"edgehaze {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgehaze {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
