"""Write ``tests/official_refs/<name>.pt`` from the official code (see
``tests/official_code.py``). Run where the official mirrors are present::

    EDGEHAZE_OFFICIAL_CODE=/work/.mirror .venv/bin/python tests/make_official_refs.py oknet

Each file holds the seeded input and the official model's output on the seeded
weights (:func:`official_code.seeded_state`), computed in float64, plus the
official commit it came from. float64 because the files are compared on other
machines: in float32 a different CPU (vector width, BLAS kernel, thread split)
reorders sums, and deep attention stacks amplify that to ~1e-4 relative
(MB-TaylorFormer on the CI machine), above the 1e-5 bound; in float64 the same
reorderings stay near 1e-12.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import official_code  # noqa: E402


@dataclass(frozen=True)
class Spec:
    repo: str
    files: Sequence[str]
    module: str
    build: Callable  # module -> official nn.Module
    run: Callable  # (official model, [0,1] image) -> [0,1]-range output, the official test procedure
    size: Tuple[int, int] = (19, 23)
    seed: int = 0


def _oknet_run(model, image):  # official Dehazing/ITS/eval.py: reflect pad bottom/right to x4, output [2], crop
    h, w = image.shape[-2:]
    factor = 4
    H, W = ((h + factor) // factor) * factor, ((w + factor) // factor) * factor
    padh = H - h if h % factor != 0 else 0
    padw = W - w if w % factor != 0 else 0
    return model(F.pad(image, (0, padw, 0, padh), "reflect"))[2][:, :, :h, :w]


def _padded_run(factor):  # official test scripts: reflect pad bottom/right to a multiple of factor, crop
    def run(model, image):
        h, w = image.shape[-2:]
        H, W = ((h + factor) // factor) * factor, ((w + factor) // factor) * factor
        padh = H - h if h % factor != 0 else 0
        padw = W - w if w % factor != 0 else 0
        return model(F.pad(image, (0, padw, 0, padh), "reflect"))[:, :, :h, :w]
    return run


def _mbt_build(module, large=False):  # settings of Dehazing/Options/MB-TaylorFormer-{B,L}.yml
    blocks, paths = ([4, 6, 6, 8], [2, 3, 3, 3]) if large else ([2, 3, 3, 4], [2, 2, 2, 2])
    return module.MB_TaylorFormer(inp_channels=3, out_channels=3, model_name=16, dim=[24, 48, 72, 96],
                                  num_blocks=blocks, num_refinement_blocks=4 if large else 2, heads=[1, 2, 4, 8],
                                  ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
                                  dual_pixel_task=False, num_path=paths, qk_norm=0.5, offset_clamp=[-3, 3])


def _sgdn_run(model, image):  # official test: model(lq)[0]; odd sizes through the file's own pad_img (x8), cropped
    h, w = image.shape[-2:]
    module = sys.modules[type(model).__module__]
    return model(module.pad_img(image, 8))[0][:, :, :h, :w]


class _CpuTorch:
    """``torch`` for the official CoA student on a CPU: its DEConv kernels are
    assembled in ``torch.cuda.FloatTensor(...)`` buffers (CUDA-only). This
    proxy gives those zero-filled buffers on the CPU, in the default dtype
    (float64 while a reference is written, float32 otherwise, as the weights);
    every other attribute is torch's own."""

    class _Cuda:
        @staticmethod
        def FloatTensor(*shape):  # noqa: N802 (the official call's name)
            return torch.empty(*shape, dtype=torch.get_default_dtype())

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(torch.cuda, name)

    cuda = _Cuda()

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(torch, name)


def _coa_build(module, cls):
    module.torch = _CpuTorch()
    return getattr(module, cls)()


def _coa_run(model, image):
    """The official data pipeline's CLIP normalisation (``preprocess_feature``),
    reflect pad bottom/right to a multiple of 16 (the official scripts pad to 4
    on 256 crops; other sizes need 16), ``model(x)[0]``, crop; buffers in the image's dtype."""
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), dtype=image.dtype)[:, None, None]
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711), dtype=image.dtype)[:, None, None]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(image.dtype)
    try:
        return _padded_run(16)(lambda x: model(x)[0], (image - mean) / std)
    finally:
        torch.set_default_dtype(previous)


def _stub_profilers():
    """The official MB-TaylorFormer file imports torchstat (used only in its __main__)."""
    import types
    sys.modules.setdefault("torchstat", types.SimpleNamespace(stat=None))


SPECS = {
    "oknet": Spec(
        repo="c-yn/OKNet",
        files=("Dehazing/ITS/models/OKNet.py", "Dehazing/ITS/models/layers.py"),
        module="Dehazing.ITS.models.OKNet",
        build=lambda m: m.build_net(),
        run=_oknet_run,
    ),
    "mb-taylorformer-b": Spec(
        repo="FVL2020/ICCV-2023-MB-TaylorFormer",
        files=("basicsr/models/archs/MB_TaylorFormer.py",),
        module="basicsr.models.archs.MB_TaylorFormer",
        build=lambda m: _mbt_build(m),
        run=_padded_run(8),
    ),
    "sgdn": Spec(
        repo="fiwy0527/AAAI25_SGDN",
        files=("basicsr/archs/SGDN_arch.py",),
        module="basicsr.archs.SGDN_arch",
        build=lambda m: m.SGDN(),
        run=_sgdn_run,
        size=(21, 27),
    ),
    "coa": Spec(  # the student as it trains (DEConv): Student.pth / EMA.pth
        repo="YanZhang-zy/CoA",
        files=("model/Student.py",),
        module="model.Student",
        build=lambda m: _coa_build(m, "Student"),
        run=_coa_run,
    ),
    "coa-r": Spec(  # the re-parameterised student: EMA_r.pth
        repo="YanZhang-zy/CoA",
        files=("model/Student_x.py",),
        module="model.Student_x",
        build=lambda m: _coa_build(m, "Student_x"),
        run=_coa_run,
    ),
}


def official_model(name: str, tmp: Path):  # type: ignore[no-untyped-def]
    """(official model with seeded weights, commit) or None without the mirror."""
    spec = SPECS[name]
    root = official_code.extract(spec.repo, spec.files, tmp)
    if root is None:
        return None
    _stub_profilers()
    model = spec.build(official_code.import_from(root, spec.module))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(official_code.seeded_state(shapes, spec.seed), strict=True)
    commit = subprocess.run(["git", "--git-dir", str(official_code.mirror_dir(spec.repo)), "rev-parse", "HEAD"],
                            check=True, capture_output=True, text=True).stdout.strip()
    return model.eval(), commit


def write_ref(name: str) -> Path:
    spec = SPECS[name]
    with tempfile.TemporaryDirectory() as tmp:
        got = official_model(name, Path(tmp))
        if got is None:
            raise SystemExit(f"{spec.repo}: no mirror under $EDGEHAZE_OFFICIAL_CODE; fetch it first")
        model, commit = got
        model = model.double()
        image = official_code.seeded_image(*spec.size, seed=spec.seed + 1).double()
        with torch.no_grad():
            out = spec.run(model, image)
    path = official_code.REFS / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"input": image, "output": out.contiguous(), "repo": spec.repo, "commit": commit,
                "seed": spec.seed}, path)
    return path


if __name__ == "__main__":
    torch.set_num_threads(2)
    for arg in sys.argv[1:] or sorted(SPECS):
        print(write_ref(arg))
