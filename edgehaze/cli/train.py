"""``edgehaze train``: the two-stage teacher recipe from a YAML config.

    edgehaze train --config configs/quickstart.yaml
    edgehaze train --config configs/reside6k-dehazeformer-t.yaml data.root=/data/RESIDE-6K fused.finetune=depth
    edgehaze train --resume runs/quickstart            # continue a killed run
    torchrun --nproc_per_node 4 -m edgehaze train --config ...   # DDP (see configs/README.md)

Overrides are dotted ``key=value`` pairs (``train.lr=1e-4``, ``stages=[fused]``).
A run directory holds ``config.yaml``, ``train_log.csv``, ``val_log.csv`` and
per stage ``{rgb,fused}/{best,last}.safetensors`` + ``last.state.pt``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "train",
        help="train a depth-guided dehazer (stage 1 RGB, stage 2 fused) from a YAML config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="experiment YAML (see configs/)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="RUN_DIR|auto",
        help="continue from the last checkpoint: 'auto' uses the config's run dir; "
        "RUN_DIR uses the config.yaml stored there",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from edgehaze.errors import ConfigError
    from edgehaze.train.config import TrainConfig, load_config, to_dict

    resume = args.resume is not None
    config_path = args.config
    if resume and args.resume != "auto":
        run_dir = Path(args.resume)
        stored = run_dir / "config.yaml"
        if not stored.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run directory of `edgehaze train`?")
        if config_path is not None:
            raise ConfigError("--resume RUN_DIR uses the config stored in the run; drop --config (or use --resume auto)")
        config_path = stored
    if config_path is None:
        raise ConfigError("pass --config FILE (e.g. configs/quickstart.yaml), or --resume RUN_DIR")
    overrides = list(args.overrides)
    if resume and args.resume != "auto":
        overrides.append(f"out_dir={Path(args.resume)}")  # the run stays where it is, from any cwd
    cfg = load_config(config_path, TrainConfig, overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from edgehaze.train.teacher import find_resumable, run_training

    if resume and not find_resumable(cfg.run_dir()):
        print(f"edgehaze train: nothing to resume in {cfg.run_dir()}; starting a new run")
    run_training(cfg, resume=resume)
    return 0
