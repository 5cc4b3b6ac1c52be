"""Training: typed configs, a generic resumable/distributed trainer, the teacher recipe.

* :mod:`edgehaze.train.config`: YAML -> dataclass schemas with validation
  and dotted ``key=value`` overrides (reusable sections for other commands).
* :mod:`edgehaze.train.trainer`: :class:`Trainer`, one stage of any model
  with a pluggable ``step_fn`` (``edgehaze distill`` reuses it).
* :mod:`edgehaze.train.teacher`: the paper's two-stage recipe (RGB backbone,
  then depth fusion fine-tuning), ``run_training(cfg)``.
* :mod:`edgehaze.train.ddp`: torchrun / DistributedDataParallel helpers.
* :mod:`edgehaze.train.losses`, :mod:`edgehaze.train.state`,
  :mod:`edgehaze.train.data`, :mod:`edgehaze.train.logs`: the parts.

Heavy imports (torch) happen when these submodules are imported, not here.
"""
