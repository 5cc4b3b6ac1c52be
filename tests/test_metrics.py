"""Tests of edgehaze.metrics: full-reference metrics, NIQE, FADE, cost counters.

Tests that need the official NIQE/FADE statistics or real photos read them from
``$EDGEHAZE_SHARED/data`` (default /work/shared) and skip when absent. The
always-run tests fit their own small models on procedurally generated scenes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from edgehaze.errors import EdgehazeError
from edgehaze.metrics import fade, fade_features, fit_niqe_model, niqe, psnr, psnr_y, save_niqe_model, ssim
from edgehaze.metrics import psnr_torch, psnr_y_torch, ssim_torch
from edgehaze.metrics._matlab import imresize
from edgehaze.metrics.cost import count_flops, count_macs, count_params, measure_cost
from edgehaze.metrics.fade import FOGFREE_FILE, FOGGY_FILE
from edgehaze.metrics.niqe import fit_aggd

torch.set_num_threads(2)
SHARED = Path(os.environ.get("EDGEHAZE_SHARED", "/work/shared")) / "data"
NIQE_MAT = SHARED / "metrics" / "niqe" / "modelparameters.mat"
FADE_DIR = SHARED / "metrics" / "fade"


# ----------------------------------------------------------------- helpers


def natural_scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A procedural "natural-ish" RGB scene in [0, 1] and its depth (metres).

    Sky gradient above a horizon, 1/f-noise texture, a few hard-edged objects,
    and a depth that grows towards the horizon (objects are nearer).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    tex = np.stack([np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((h, w))))) for _ in range(3)], -1)
    tex = (tex - tex.mean()) / tex.std()
    horizon = 0.35 + 0.05 * np.sin(6 * xx[0] + seed)
    sky = yy < horizon[None, :]
    img = np.where(sky[..., None], np.array([0.45, 0.6, 0.85]) + 0.25 * (yy[..., None] - 0.3), np.array([0.35, 0.45, 0.2]))
    img = img + np.where(sky[..., None], 0.02, 0.12) * tex
    below = np.clip((yy - horizon[None, :]) / (1.0 - horizon[None, :]), 0.0, 1.0)  # 0 at horizon, 1 at bottom
    depth = np.where(sky, 60.0, 2.0 + 40.0 * (1.0 - below))
    for _ in range(6):  # objects with hard edges: rectangles and disks
        cy, cx, r = rng.uniform(0.45, 0.95), rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.15)
        colour = rng.uniform(0.05, 0.95, 3)
        mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * 0.7) if rng.random() < 0.5 else np.hypot(yy - cy, (xx - cx) * w / h) < r
        img = np.where(mask[..., None], colour + 0.08 * tex, img)
        depth = np.where(mask, np.minimum(depth, 1.0 + 30.0 * (1.0 - cy)), depth)
    return np.clip(img, 0.0, 1.0), depth


def add_haze(img: np.ndarray, depth: np.ndarray, beta: float, airlight: float = 0.9) -> np.ndarray:
    """Atmospheric scattering model: ``I = J t + A (1 - t)``, ``t = exp(-beta d)``."""
    t = np.exp(-beta * depth)[..., None]
    return img * t + airlight * (1.0 - t)


def degrade(img: np.ndarray, seed: int = 0) -> np.ndarray:
    """Heavy blur plus noise."""
    from scipy.ndimage import gaussian_filter

    blurred = np.stack([gaussian_filter(img[..., c], 3.0) for c in range(3)], -1)
    return np.clip(blurred + np.random.default_rng(seed).normal(0, 0.08, img.shape), 0, 1)


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1
    )


# -------------------------------------------------------- full reference


def test_psnr_of_constant_offset_is_20db():
    gt = np.full((17, 23, 3), 0.4)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)
    assert psnr(gt + 0.01, gt) == pytest.approx(40.0, abs=1e-9)
    assert psnr(gt + 25.5, gt, data_range=255.0) == pytest.approx(20.0, abs=1e-9)
    assert psnr(gt, gt) == math.inf


def test_psnr_y_known_values():
    gt = np.full((9, 13, 3), 0.3)
    red = gt.copy()
    red[..., 0] += 0.1  # Y moves by 6.5481 levels of 255
    assert psnr_y(red, gt) == pytest.approx(20 * math.log10(255 / 6.5481), abs=1e-9)
    grey = gt + 0.1  # all channels: Y moves by 21.9 levels (the weights sum to 219)
    assert psnr_y(grey, gt) == pytest.approx(20 * math.log10(255 / 21.9), abs=1e-9)
    # A chroma-only change that keeps luma leaves PSNR-Y infinite.
    chroma = gt.copy()
    chroma[..., 0] += 0.001 * 128.553
    chroma[..., 1] -= 0.001 * 65.481
    assert psnr(chroma, gt) < 60 and psnr_y(chroma, gt) > 200


@pytest.mark.parametrize("shape", [(11, 11, 3), (37, 53, 3), (64, 48, 3), (101, 77, 3)])
def test_ssim_matches_skimage_on_random_images(shape):
    rng = np.random.default_rng(shape[0])
    a = rng.random(shape)
    b = np.clip(a + 0.15 * rng.standard_normal(shape), 0, 1)
    assert abs(ssim(a, b) - skimage_ssim(a, b)) < 1e-4


def test_ssim_matches_skimage_on_structured_images():
    img, depth = natural_scene(93, 131, seed=3)
    hazy = add_haze(img, depth, 0.03)
    blurred = degrade(img)
    for other in (hazy, blurred, img[::-1].copy()):
        assert abs(ssim(other, img) - skimage_ssim(other, img)) < 1e-4
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(blurred, img) < 1.0 and ssim(hazy, img) < 1.0


def test_fullref_rejects_mismatched_shapes_and_tiny_images():
    with pytest.raises(EdgehazeError, match="shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(EdgehazeError, match="11 x 11"):
        ssim(np.zeros((10, 40, 3)), np.zeros((10, 40, 3)))


def test_torch_versions_equal_numpy_per_image():
    imgs = [natural_scene(45, 67, seed=s)[0] for s in range(3)]
    preds = [degrade(i, seed=s) for s, i in enumerate(imgs)]
    gt_t = torch.cat([nchw(i) for i in imgs]).float()
    pred_t = torch.cat([nchw(p) for p in preds]).float()
    got_psnr, got_ssim, got_y = psnr_torch(pred_t, gt_t), ssim_torch(pred_t, gt_t), psnr_y_torch(pred_t, gt_t)
    assert got_psnr.shape == got_ssim.shape == got_y.shape == (3,)
    for k in range(3):  # numpy on the same float32 values
        p = pred_t[k].permute(1, 2, 0).double().numpy()
        g = gt_t[k].permute(1, 2, 0).double().numpy()
        assert abs(float(got_psnr[k]) - psnr(p, g)) < 1e-4
        assert abs(float(got_ssim[k]) - ssim(p, g)) < 1e-4
        assert abs(float(got_y[k]) - psnr_y(p, g)) < 1e-4
    assert torch.isinf(psnr_torch(gt_t, gt_t)).all()
    assert torch.allclose(ssim_torch(gt_t, gt_t), torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------- MATLAB helpers


def test_imresize_half_matches_pillow_bicubic_away_from_borders():
    """Pillow's antialiased bicubic (Keys, a = -0.5) is an independent implementation
    of the same kernel; only the border handling differs from MATLAB's mirror."""
    from PIL import Image

    a = np.random.default_rng(1).random((96, 144)) * 255
    ours = imresize(a, 0.5)
    ref = np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((72, 48), Image.BICUBIC), dtype=np.float64)
    assert ours.shape == (48, 72)
    assert np.abs(ours - ref)[4:-4, 4:-4].max() < 1e-3
    assert np.allclose(imresize(np.full((20, 30), 7.0), 0.5), 7.0)


@pytest.mark.parametrize("shape_param", [1.0, 2.0, 0.6])
def test_aggd_fit_recovers_generalised_gaussian_shape(shape_param):
    from scipy.stats import gennorm

    x = gennorm.rvs(shape_param, scale=0.5, size=50_000, random_state=0)
    shape, left, right = fit_aggd(x)
    assert shape == pytest.approx(shape_param, rel=0.06)
    assert left == pytest.approx(0.5, rel=0.05) and right == pytest.approx(0.5, rel=0.05)


# ----------------------------------------------------------------- NIQE


@pytest.fixture(scope="module")
def synthetic_niqe_model(tmp_path_factory):
    images = [natural_scene(192, 288, seed=s)[0] for s in range(10, 16)]
    mean, cov = fit_niqe_model(images)
    path = tmp_path_factory.mktemp("niqe") / "pristine.npz"
    save_niqe_model(path, mean, cov)
    return path


def test_niqe_without_params_names_the_official_file():
    with pytest.raises(EdgehazeError, match=r"modelparameters\.mat.*live\.ece\.utexas\.edu"):
        niqe(np.zeros((96, 96, 3)))
    with pytest.raises(EdgehazeError, match="does not exist"):
        niqe(np.zeros((96, 96, 3)), "/nonexistent/modelparameters.mat")


def test_niqe_with_own_model_prefers_sharp_over_degraded(synthetic_niqe_model):
    img = natural_scene(192, 288, seed=1)[0]
    sharp = niqe(img, synthetic_niqe_model)
    assert sharp == niqe(img, synthetic_niqe_model)  # deterministic
    assert np.isfinite(sharp)
    assert sharp < niqe(degrade(img), synthetic_niqe_model)
    with pytest.raises(EdgehazeError, match="96 x 96"):
        niqe(img[:90], synthetic_niqe_model)


@pytest.mark.skipif(not NIQE_MAT.is_file(), reason="official NIQE model not in $EDGEHAZE_SHARED")
def test_niqe_official_model_sharp_below_degraded():
    img = natural_scene(192, 288, seed=2)[0]
    sharp = niqe(img, NIQE_MAT)
    assert np.isfinite(sharp) and sharp == niqe(img, NIQE_MAT)
    assert sharp < niqe(degrade(img), NIQE_MAT)
    npz = NIQE_MAT.parent / "basicsr" / "niqe_pris_params.npz"
    if npz.is_file():  # the same numbers as .npz give the same score
        assert niqe(img, npz) == pytest.approx(sharp, abs=1e-12)


# ----------------------------------------------------------------- FADE


def _save_fade_stats(folder: Path, fogfree: np.ndarray, foggy: np.ndarray) -> Path:
    for name, key, feats in ((FOGFREE_FILE, "fogfree", fogfree), (FOGGY_FILE, "foggy", foggy)):
        flat = feats.reshape(-1, 12)
        flat = flat[np.isfinite(flat).all(axis=1)]
        scipy.io.savemat(str(folder / name), {f"mu_{key}param": flat.mean(0)[None], f"cov_{key}param": np.cov(flat, rowvar=False)})
    return folder


@pytest.fixture(scope="module")
def synthetic_fade_stats(tmp_path_factory):
    """FADE statistics fitted on procedural clear scenes and on the same scenes in dense haze."""
    clear, foggy = [], []
    for s in range(20, 24):
        img, depth = natural_scene(96, 128, seed=s)
        clear.append(fade_features(img))
        foggy.append(fade_features(add_haze(img, depth, 0.08)))
    return _save_fade_stats(tmp_path_factory.mktemp("fade"), np.concatenate(clear), np.concatenate(foggy))


def test_fade_without_stats_names_the_files():
    with pytest.raises(EdgehazeError, match=r"natural_fogfree_image_features_ps8\.mat.*FADE_release\.zip"):
        fade(np.zeros((16, 16, 3)))


def _assert_rising(values: list[float]) -> None:
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_fade_rises_with_haze_with_own_stats(synthetic_fade_stats):
    img, depth = natural_scene(120, 161, seed=5)  # not a multiple of 8: cropped
    values = [fade(add_haze(img, depth, beta), synthetic_fade_stats) for beta in (0.0, 0.02, 0.05, 0.1)]
    _assert_rising(values)
    density, dmap = fade(img, synthetic_fade_stats, return_map=True)
    assert density == values[0]
    assert dmap.shape == (15, 20)


@pytest.mark.skipif(not FADE_DIR.joinpath(FOGFREE_FILE).is_file(), reason="official FADE stats not in $EDGEHAZE_SHARED")
def test_fade_official_stats_rise_with_haze_and_are_deterministic():
    img, depth = natural_scene(128, 176, seed=7)
    values = [fade(add_haze(img, depth, beta), FADE_DIR) for beta in (0.0, 0.02, 0.05, 0.1)]
    _assert_rising(values)
    assert fade(img, FADE_DIR) == values[0]


@pytest.mark.skipif(not (SHARED / "fohis_depth" / "img.jpg").is_file() or not FADE_DIR.is_dir(), reason="shared data absent")
def test_fade_official_stats_on_real_photo_with_real_depth():
    from PIL import Image

    img = np.asarray(Image.open(SHARED / "fohis_depth" / "img.jpg").convert("RGB").resize((320, 240))) / 255.0
    raw = np.asarray(Image.open(SHARED / "fohis_depth" / "imgd.jpg").resize((320, 240)))
    raw = raw[..., 0] if raw.ndim == 3 else raw
    depth = np.where(raw == 0, 1, raw).astype(float) * 3  # FoHIS convention: 8-bit value x 3 = metres
    values = [fade(add_haze(img, depth, beta), FADE_DIR) for beta in (0.0, 0.01, 0.03, 0.06)]
    _assert_rising(values)


@pytest.mark.skipif(not (SHARED / "sots_indoor" / "gt").is_dir() or not FADE_DIR.is_dir(), reason="shared data absent")
def test_fade_official_stats_higher_on_sots_hazy_than_gt():
    from PIL import Image

    for scene, hazy in (("1430", "1430_1"),):
        gt = np.asarray(Image.open(SHARED / "sots_indoor" / "gt" / f"{scene}.png").convert("RGB")) / 255.0
        hz = np.asarray(Image.open(SHARED / "sots_indoor" / "hazy" / f"{hazy}.png").convert("RGB")) / 255.0
        assert fade(hz, FADE_DIR) > fade(gt, FADE_DIR)


# ----------------------------------------------------------------- cost


def test_count_params_and_flops_of_known_layers():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_params(conv) == 3 * 8 * 9 + 8
    x = torch.zeros(1, 3, 16, 16)
    assert count_macs(conv, x) == 8 * 16 * 16 * 3 * 9
    assert count_flops(conv, x) == 2 * 8 * 16 * 16 * 3 * 9
    lin = torch.nn.Linear(10, 4, bias=False)
    assert count_params(torch.nn.Sequential(lin, lin)) == 40  # a shared module counts once
    cost = measure_cost(lin, torch.zeros(5, 10))
    assert (cost.params, cost.flops, cost.macs) == (40, 2 * 5 * 10 * 4, 5 * 10 * 4)
    frozen = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    frozen[0].requires_grad_(False)
    assert count_params(frozen, trainable_only=True) == 9


# ----------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random AlexNet backbone and non-negative heads in the official file layouts."""
    import torchvision

    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, folder / "alexnet.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(heads, folder / "alex.pth")
    return folder


def test_lpips_needs_both_local_weight_files(lpips_files):
    from edgehaze.errors import CheckpointError, MissingWeightsError
    from edgehaze.metrics.lpips import LPIPS

    with pytest.raises(MissingWeightsError, match=r"alex\.pth.*alexnet-owt-7be5be79\.pth"):
        LPIPS()
    with pytest.raises(MissingWeightsError, match="does not exist"):
        LPIPS(lpips_files / "alex.pth", lpips_files / "missing.pth")
    bad = lpips_files / "bad_heads.pth"
    torch.save({"lin0.model.1.weight": torch.rand(1, 3, 1, 1)}, bad)
    with pytest.raises(CheckpointError, match="lin0.model.1.weight"):
        LPIPS(bad, lpips_files / "alexnet.pth")


def test_lpips_properties_and_per_stage_value(lpips_files):
    import torchvision

    from edgehaze.metrics.lpips import LPIPS

    model = LPIPS(lpips_files / "alex.pth", lpips_files / "alexnet.pth")
    img = torch.from_numpy(np.stack([natural_scene(64, 80, seed=s)[0] for s in (1, 2)]).transpose(0, 3, 1, 2)).float()
    other = torch.from_numpy(np.stack([degrade(natural_scene(64, 80, seed=s)[0]) for s in (1, 2)]).transpose(0, 3, 1, 2)).float()
    d = model(img, other)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(model(other, img), d)
    assert torch.allclose(model(img, img), torch.zeros(2))

    # With only the last head non-zero, the distance is that head applied to the
    # unit-normalised conv5 features of an independently built torchvision AlexNet.
    heads = torch.load(lpips_files / "alex.pth", weights_only=True)
    last_only = {k: (v if k.startswith("lin4") else torch.zeros_like(v)) for k, v in heads.items()}
    torch.save(last_only, lpips_files / "last_only.pth")
    model4 = LPIPS(lpips_files / "last_only.pth", lpips_files / "alexnet.pth")
    ref = torchvision.models.alexnet(weights=None)
    ref.load_state_dict(torch.load(lpips_files / "alexnet.pth", weights_only=True), strict=False)
    assert torch.equal(ref.features[10].weight, model4.stages[4][0].weight)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    with torch.no_grad():
        fa = ref.features[:12]((img * 2 - 1 - shift) / scale)
        fb = ref.features[:12]((other * 2 - 1 - shift) / scale)
    unit = lambda f: f / (f.norm(dim=1, keepdim=True) + 1e-10)  # noqa: E731
    expected = ((unit(fa) - unit(fb)) ** 2 * heads["lin4.model.1.weight"]).sum(1).mean(dim=(1, 2))
    assert torch.allclose(model4(img, other), expected, rtol=1e-5, atol=1e-7)


def test_fade_contrast_energy_follows_matlab_conv2_same_with_block_padding():
    """CE.m: block-copy padding of 10, MATLAB conv2 'same' (true convolution, offset
    floor(20/2) into the full result) with the asymmetric 20-tap kernel, crop 10."""
    from edgehaze.metrics.fade import _ce_kernel, _contrast_energy

    k = _ce_kernel()
    assert k.shape == (20,) and abs(k.sum()) < 1e-12
    ch = np.random.default_rng(4).random((24, 33)) * 255
    p = np.concatenate([ch[:10], ch, ch[-10:]], 0)
    p = np.concatenate([p[:, :10], p, p[:, -10:]], 1)
    full_x = np.stack([np.convolve(row, k, mode="full") for row in p])[:, 10 : 10 + p.shape[1]]
    full_y = np.stack([np.convolve(col, k, mode="full") for col in p.T]).T[10 : 10 + p.shape[0]]
    c = np.hypot(full_x, full_y)[10:-10, 10:-10]
    r = c * c.max() / (c + 0.1 * c.max()) - 0.5
    assert np.allclose(_contrast_energy(ch, 0.5), np.where(r > 1e-7, r, 0.0), atol=1e-9)
