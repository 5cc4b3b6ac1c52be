"""Distillation: a compact depth encoder that stands in for the ViT teacher.

``edgehaze distill`` trains a *student* depth encoder so that a dehazer fused
with it reproduces, at each fusion point, the fused features of the same
dehazer fused with a large Depth Anything V2 teacher (method.md section 7).

* :mod:`edgehaze.distill.students`: the student encoders, registered in the
  same depth-model registry as the teachers (``student-s``, ``student-m``,
  ``student-timm``), so ``build_dehazer(depth="student-s")`` works.
* :mod:`edgehaze.distill.distiller`: teacher/student construction, the
  distillation loss, freezing, the training loop.
* :mod:`edgehaze.distill.report`: teacher vs student cost and quality.

Torch is imported by the submodules only; importing this package is cheap.
"""
