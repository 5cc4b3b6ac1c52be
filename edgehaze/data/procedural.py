"""Procedural RGB-D scenes with exact depth, for quickstarts and tests.

A tiny ray caster in numpy: a pinhole camera (random height, pitch, field of
view) looks over a textured ground plane at oriented boxes (houses, crates),
optional side walls (a street) and an optional back wall (a closed scene),
under a sky gradient. Each pixel's depth is the exact Euclidean distance
along its ray in metres (the path length that haze attenuates), capped at
``far``; the sky and the ground beyond ``far`` sit at ``far``. Sun shading
and cast shadows give the boxes shape. Everything is a function of the seed.

Hazy images are then made with the scattering model from that depth
(:mod:`edgehaze.data.synthesis`), with depth normalised by the *fixed*
``far`` distance rather than by each image's maximum, so a closed street is
less hazy than an open plain, as in real fog.
"""
from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from edgehaze.data.synthesis import DEFAULT_AIRLIGHT, HazeParams, sample_params, synthesize
from edgehaze.errors import EdgehazeError

DEFAULT_FAR = 100.0
#: beta per ``far`` distance: with depth / far in [0, 1], an object 30 m away
#: keeps 47-74 % of its light and the horizon 8-37 %: clearly depth-dependent.
PROCEDURAL_BETA = (1.0, 2.5)


@dataclass
class _Box:
    center: np.ndarray  # (x, y, z) world, y = half height (sits on the ground)
    half: np.ndarray  # half sizes in the box's own frame
    angle: float  # rotation about the vertical axis
    colour: np.ndarray
    pattern: int  # 0 noise, 1 windows, 2 bricks, 3 stripes
    scale: float  # pattern period in metres


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


class _Noise:
    """Smooth 2-D value noise on a wrapped random lattice (cheap texture)."""

    def __init__(self, rng: np.random.Generator, size: int = 32) -> None:
        self.grid = rng.random((size, size)).astype(np.float32)
        self.size = size

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        n = self.size
        u0 = np.floor(u)
        v0 = np.floor(v)
        fu = (u - u0).astype(np.float32)
        fv = (v - v0).astype(np.float32)
        fu = fu * fu * (3 - 2 * fu)
        fv = fv * fv * (3 - 2 * fv)
        i0 = u0.astype(np.int64) % n
        j0 = v0.astype(np.int64) % n
        i1 = (i0 + 1) % n
        j1 = (j0 + 1) % n
        g = self.grid
        top = g[j0, i0] * (1 - fu) + g[j0, i1] * fu
        bot = g[j1, i0] * (1 - fu) + g[j1, i1] * fu
        return top * (1 - fv) + bot * fv

    def fractal(self, u: np.ndarray, v: np.ndarray, octaves: int = 3) -> np.ndarray:
        out = np.zeros(np.shape(u), np.float32)
        amp, total = 1.0, 0.0
        for k in range(octaves):
            f = 2.0**k
            out += amp * self(u * f + 17.0 * k, v * f + 31.0 * k)
            total += amp
            amp *= 0.5
        return out / total


def _to_local(box: "_Box", x: np.ndarray, y: np.ndarray, z: np.ndarray, point: bool) -> Tuple[np.ndarray, ...]:
    """World -> box frame (rotation about y; translation only for points).

    Works on separate component arrays: an (N, 3) @ (3, 3) product is far
    slower than three fused element-wise lines in numpy.
    """
    c, s = np.cos(box.angle), np.sin(box.angle)
    if point:
        x, y, z = x - box.center[0], y - box.center[1], z - box.center[2]
    return x * c - z * s, y, x * s + z * c


def _to_world(box: "_Box", lx: np.ndarray, ly: np.ndarray, lz: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Box-frame direction -> world direction (inverse of :func:`_to_local`)."""
    c, s = np.cos(box.angle), np.sin(box.angle)
    return lx * c + lz * s, ly, -lx * s + lz * c


def _slab(box: "_Box", o: Tuple[np.ndarray, ...], d: Tuple[np.ndarray, ...]) -> Tuple[np.ndarray, ...]:
    """Ray/box slab test in the box frame: (t_near, t_far, axis of t_near)."""
    near = far = None
    axis = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / d[k]
            t1 = (-box.half[k] - o[k]) * inv
            t2 = (box.half[k] - o[k]) * inv
            lo = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf, posinf=np.inf, neginf=-np.inf)
            hi = np.nan_to_num(np.maximum(t1, t2), nan=np.inf, posinf=np.inf, neginf=-np.inf)
            if near is None:
                near, far, axis = lo, hi, np.zeros(lo.shape, np.int8)
            else:
                axis = np.where(lo > near, np.int8(k), axis)
                near = np.maximum(near, lo)
                far = np.minimum(far, hi)
    return near, far, axis


def _box_hit(box: "_Box", origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays from ``origin`` along (dx, dy, dz): (t_hit or inf, hit face axis, face sign)."""
    o = _to_local(box, *(np.asarray(v, np.float32) for v in origin), point=True)
    d = _to_local(box, dx, dy, dz, point=False)
    near, far, axis = _slab(box, o, d)
    hit = (near <= far) & (near > 1e-5)
    d_axis = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2]))
    return np.where(hit, near, np.inf), axis, -np.sign(d_axis)


def _random_boxes(rng: np.random.Generator) -> List[_Box]:
    boxes: List[_Box] = []
    palette_h = rng.random()
    for _ in range(int(rng.integers(2, 8))):  # free-standing boxes
        for _try in range(20):
            hx, hz = rng.uniform(0.4, 4.0, size=2)
            hy = rng.uniform(0.3, 6.0) if rng.random() < 0.6 else rng.uniform(0.3, 1.2)
            x = rng.uniform(-14, 14)
            z = rng.uniform(3.0, 60.0)
            if np.hypot(x, z) > np.hypot(hx, hz) + 1.5:  # the camera stays outside
                break
        hue = palette_h + rng.normal(0, 0.15)
        colour = _hsv(hue, rng.uniform(0.1, 0.7), rng.uniform(0.35, 0.95))
        pattern = int(rng.choice([0, 1, 2, 3], p=[0.25, 0.35, 0.25, 0.15]))
        boxes.append(_Box(np.array([x, hy, z]), np.array([hx, hy, hz]), rng.uniform(-0.8, 0.8),
                          colour, pattern, rng.uniform(0.4, 2.0)))
    for side in (-1, 1):  # street walls
        if rng.random() < 0.4:
            hy = rng.uniform(1.5, 9.0)
            z0 = rng.uniform(0.0, 15.0)
            length = rng.uniform(15.0, 70.0)
            x = side * rng.uniform(4.0, 12.0)
            colour = _hsv(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.4, 0.9))
            boxes.append(_Box(np.array([x, hy, z0 + length / 2]), np.array([0.3, hy, length / 2]),
                              rng.normal(0, 0.05), colour, int(rng.choice([1, 2])), rng.uniform(0.5, 2.5)))
    if rng.random() < 0.25:  # back wall: a closed scene
        hy = rng.uniform(2.0, 12.0)
        z = rng.uniform(12.0, 50.0)
        colour = _hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.4, 0.9))
        boxes.append(_Box(np.array([rng.uniform(-5, 5), hy, z]), np.array([60.0, hy, 0.4]),
                          rng.normal(0, 0.2), colour, int(rng.choice([1, 2, 3])), rng.uniform(0.5, 2.5)))
    return boxes


def _box_texture(box: _Box, lx: np.ndarray, ly: np.ndarray, lz: np.ndarray, axis: np.ndarray,
                 noise: _Noise) -> np.ndarray:
    """Albedo (N x 3) of hit points (box frame) on faces ``axis``."""
    # two in-face coordinates: x/z faces use (the other horizontal, y); y faces use (x, z)
    a = np.where(axis == 0, lz, lx)
    b = np.where(axis == 1, lz, ly)
    s = box.scale
    n = noise.fractal(a * (1.7 / s), b * (1.7 / s))
    shade = 0.85 + 0.3 * (n - 0.5)
    if box.pattern == 1:  # windows
        fa = np.mod(a / (1.6 * s), 1.0)
        fb = np.mod(b / (1.4 * s), 1.0)
        window = (fa > 0.3) & (fa < 0.75) & (fb > 0.3) & (fb < 0.8) & (axis != 1)
        shade = np.where(window, 0.35 + 0.2 * n, shade)
    elif box.pattern == 2:  # bricks
        row = np.floor(b / (0.25 * s))
        fa = np.mod(a / (0.6 * s) + 0.5 * np.mod(row, 2), 1.0)
        fb = np.mod(b / (0.25 * s), 1.0)
        mortar = (fa < 0.08) | (fb < 0.12)
        shade = np.where(mortar, 1.15, shade * (0.9 + 0.2 * noise(row * 3.1, np.floor(a / (0.6 * s)))))
    elif box.pattern == 3:  # stripes
        shade = shade * (0.8 + 0.25 * (np.mod(np.floor(b / (0.5 * s)), 2)))
    return np.clip(box.colour[None, :] * shade[:, None].astype(np.float32), 0.0, 1.0)


@dataclass
class SceneRender:
    """A rendered scene: colour, exact depth (metres) and what each pixel shows."""

    rgb: np.ndarray  # H x W x 3 float32 in [0, 1]
    depth: np.ndarray  # H x W float32, metres along the ray, <= far
    labels: np.ndarray  # H x W int16: -1 sky, 0 ground, k >= 1 box/wall k
    camera: Dict[str, float]


def generate_scene(
    seed: int, height: int = 128, width: int = 128, far: float = DEFAULT_FAR
) -> Tuple[np.ndarray, np.ndarray]:
    """One random scene: ``(rgb float32 H x W x 3 in [0, 1], depth float32 H x W metres)``.

    Depth is the distance along each pixel's ray, at most ``far`` (sky = ``far``).
    """
    scene = render_scene(seed, height, width, far)
    return scene.rgb, scene.depth


def render_scene(seed: int, height: int = 128, width: int = 128, far: float = DEFAULT_FAR) -> SceneRender:
    """Like :func:`generate_scene`, also returning per-pixel labels and the camera."""
    if height < 1 or width < 1:
        raise EdgehazeError(f"scene size must be positive, got {height}x{width}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xD3])
    noise = _Noise(rng)
    f32 = np.float32

    # camera at (0, cam_h, 0) looking along +z, y up; pitch < 0 looks down
    cam_h = rng.uniform(0.8, 4.5)
    pitch = rng.uniform(-0.30, 0.06)
    fov = np.deg2rad(rng.uniform(50.0, 80.0))
    origin = np.array([0.0, cam_h, 0.0])
    focal = 0.5 * max(height, width) / np.tan(fov / 2)
    ys = ((height / 2.0 - (np.arange(height) + 0.5)) / focal).astype(f32)
    xs = (((np.arange(width) + 0.5) - width / 2.0) / focal).astype(f32)
    u, v = (m.ravel() for m in np.meshgrid(xs, ys))
    cp, sp = f32(np.cos(pitch)), f32(np.sin(pitch))
    dx, dy, dz = u, v * cp + sp, -v * sp + cp
    norm = np.sqrt(dx * dx + dy * dy + dz * dz)
    dx, dy, dz = dx / norm, dy / norm, dz / norm
    n_px = dx.size

    # z-buffer over the ground plane and the boxes
    obj = np.full(n_px, -1, np.int16)  # -1 sky, 0 ground, k+1 box k
    down = dy < -1e-7
    t_best = np.where(down, f32(cam_h) / np.where(down, -dy, f32(1)), f32(np.inf)).astype(f32)
    obj[down] = 0
    boxes = _random_boxes(rng)
    axes = np.zeros(n_px, np.int8)
    signs = np.zeros(n_px, f32)
    for k, box in enumerate(boxes):
        t, ax, sg = _box_hit(box, origin, dx, dy, dz)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        obj[closer], axes[closer], signs[closer] = k + 1, ax[closer], sg[closer]

    sun = np.array([rng.uniform(-1, 1), rng.uniform(0.35, 1.2), rng.uniform(-1, 0.6)])
    sun /= np.linalg.norm(sun)
    sun_colour = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.25), 1.0)
    ambient = rng.uniform(0.35, 0.55)
    rgb = np.zeros((n_px, 3), f32)
    t_fin = np.where(np.isfinite(t_best), t_best, f32(0))
    px, py, pz = origin[0] + dx * t_fin, origin[1] + dy * t_fin, origin[2] + dz * t_fin

    sky = obj == -1
    if sky.any():
        zen = _hsv(rng.uniform(0.53, 0.66), rng.uniform(0.2, 0.6), rng.uniform(0.6, 0.95))
        hor = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.15), rng.uniform(0.8, 1.0))
        elev = (np.clip(dy[sky], 0.0, 1.0) ** 0.6)[:, None]
        up = np.maximum(dy[sky], 0.05)
        clouds = noise.fractal(dx[sky] / up * 2.0 + 50, dz[sky] / up * 2.0 + 50)
        cloud_amt = (rng.uniform(0.0, 0.6) * np.clip(clouds * 2 - 0.8, 0, 1))[:, None]
        rgb[sky] = (hor * (1 - elev) + zen * elev) * (1 - cloud_amt) + cloud_amt * 0.95

    albedo = np.zeros((n_px, 3), f32)
    nx, ny, nz = np.zeros(n_px, f32), np.zeros(n_px, f32), np.zeros(n_px, f32)
    ground = obj == 0
    if ground.any():
        gx, gz = px[ground], pz[ground]
        g_hue = rng.choice([0.08, 0.1, 0.25, 0.3, 0.6, 0.0]) + rng.normal(0, 0.03)
        g_col = _hsv(g_hue, rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.75))
        tile = rng.uniform(0.5, 4.0)
        fade = np.exp(-t_best[ground] / 25.0)  # texture contrast fades with distance (no aliasing)
        tex = noise.fractal(gx * (2.3 / tile), gz * (2.3 / tile)) - 0.5
        kind = rng.integers(0, 3)
        if kind == 0:  # tiles / checker
            pattern = (np.mod(np.floor(gx / tile) + np.floor(gz / tile), 2) - 0.5) * rng.uniform(0.1, 0.5)
        elif kind == 1:  # road lines along z
            pattern = (np.abs(np.mod(gx, tile * 4) - tile * 2) < 0.15 * tile) * 0.4
        else:  # grass / gravel: noise only
            pattern = np.zeros_like(gx)
        shade = (1.0 + (0.5 * tex + pattern) * fade).astype(f32)
        albedo[ground] = np.clip(g_col[None, :] * shade[:, None], 0, 1)
        ny[ground] = 1.0
    for k, box in enumerate(boxes):
        sel = obj == k + 1
        if not sel.any():
            continue
        lx, ly, lz = _to_local(box, px[sel], py[sel], pz[sel], point=True)
        ax = axes[sel]
        albedo[sel] = _box_texture(box, lx, ly, lz, ax, noise)
        sg = signs[sel]
        wx, wy, wz = _to_world(box, np.where(ax == 0, sg, 0), np.where(ax == 1, sg, 0), np.where(ax == 2, sg, 0))
        nx[sel], ny[sel], nz[sel] = wx, wy, wz

    # sun shading with cast shadows: a second ray per lit pixel, toward the sun
    idx = np.flatnonzero(obj >= 0)
    if idx.size:
        lnx, lny, lnz = nx[idx], ny[idx], nz[idx]
        lambert = np.clip(lnx * sun[0] + lny * sun[1] + lnz * sun[2], 0.0, 1.0)
        start = (px[idx] + lnx * 1e-3, py[idx] + lny * 1e-3, pz[idx] + lnz * 1e-3)
        shadow = np.zeros(idx.size, bool)
        for box in boxes:
            o = _to_local(box, *start, point=True)
            d = _to_local(box, *(np.full(1, c, f32) for c in sun), point=False)
            near, far_t, _ = _slab(box, o, d)
            shadow |= (near <= far_t) & (far_t > 1e-4)
        direct = np.where(shadow, 0.0, lambert) * (1.0 - ambient)
        light = ambient + direct[:, None] * sun_colour[None, :]
        rgb[idx] = np.clip(albedo[idx] * light * 1.15, 0.0, 1.0)

    depth = np.minimum(t_best, f32(far))
    return SceneRender(
        rgb=rgb.reshape(height, width, 3).astype(f32),
        depth=depth.reshape(height, width).astype(f32),
        labels=obj.reshape(height, width),
        camera={"height": float(cam_h), "pitch": float(pitch), "fov": float(fov)},
    )


def _scene_seed(seed: int, split: str, index: int) -> int:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 1 if split == "train" else 2, int(index)])
    return int(ss.generate_state(1)[0])


def make_procedural_dataset(
    out: Union[str, Path],
    n_train: int,
    n_test: int,
    size: Tuple[int, int] = (128, 128),
    seed: int = 0,
    beta: Tuple[float, float] = PROCEDURAL_BETA,
    airlight: Tuple[float, float] = DEFAULT_AIRLIGHT,
    tint: float = 0.0,
    far: float = DEFAULT_FAR,
    progress: bool = False,
) -> Dict[str, int]:
    """Write a procedural paired dataset in DehazeFormer's layout.

    ``{out}/{train,test}/{GT,hazy}/NNNNN.png``, ``depth/NNNNN.npy`` (metres)
    and ``meta/NNNNN.json`` (beta, airlight, scene seed). Haze uses depth
    divided by ``far`` (see module docstring). Returns images per split.
    """
    from edgehaze.imageio import atomic_write_bytes, write_image

    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise EdgehazeError(f"need at least one image (train={n_train}, test={n_test})")
    h, w = int(size[0]), int(size[1])
    out = Path(out)
    jobs = [("train", i) for i in range(n_train)] + [("test", i) for i in range(n_test)]
    bar: Optional[object] = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="procedural scenes", unit="img")
    for split, i in jobs:
        scene_seed = _scene_seed(seed, split, i)
        rgb, depth = generate_scene(scene_seed, h, w, far=far)
        b, a = sample_params(scene_seed, 0, beta=beta, airlight=airlight, tint=tint)
        hazy, _t = synthesize(rgb, depth / far, b, a)
        name = f"{i:05d}"
        base = out / split
        write_image(base / "GT" / f"{name}.png", rgb)
        write_image(base / "hazy" / f"{name}.png", hazy)
        (base / "depth").mkdir(parents=True, exist_ok=True)
        _save_npy(base / "depth" / f"{name}.npy", depth)
        meta = HazeParams(beta=b, airlight=a, depth_source="procedural (exact, metres)",
                          depth_mode=f"metric / far ({far:g} m)", seed=scene_seed, index=i,
                          extra={"far": far, "size": [h, w]})
        atomic_write_bytes(base / "meta" / f"{name}.json", json.dumps(meta.to_dict(), indent=2).encode())
        if bar is not None:
            bar.update(1)  # type: ignore[attr-defined]
    if bar is not None:
        bar.close()  # type: ignore[attr-defined]
    return {"train": n_train, "test": n_test}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    from edgehaze.imageio import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
