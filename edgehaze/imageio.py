"""Reading and writing images, one convention everywhere.

Inside edgehaze an image is a float32 ``H x W x 3`` RGB array in [0, 1].
Every format quirk is settled here, once, so that datasets, metrics, the CLI
and the runtime all see the same pixels:

* alpha channels are *dropped* (not composited): hazy photos and benchmark
  files that carry alpha carry an opaque one, and compositing on black would
  darken any pixel that is not;
* grayscale becomes three equal channels; palette images are expanded;
* 16-bit files keep their precision (divided by 65535), 8-bit by 255;
* the EXIF orientation tag is applied (phone JPEGs are stored sideways);
* anything unreadable (missing, empty, truncated, not an image) raises
  :class:`edgehaze.errors.ImageReadError` naming the file and the reason.

Decoding uses Pillow (it notices truncated files and knows EXIF) and falls
back to OpenCV for 16-bit colour, which Pillow silently reduces to 8 bits.
Files are read as bytes first, so paths that are not valid UTF-8 work.
Writes go to a temporary file in the target folder and are renamed into
place, so a crash never leaves half an image behind.
"""
from __future__ import annotations

import glob
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Union

import numpy as np

from edgehaze.fsutil import atomic_write_bytes  # noqa: F401  (re-exported)
from edgehaze.errors import EdgehazeError, ImageReadError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings treated as images by :func:`list_images` (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_WRITE_16BIT = (".png", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------- reading
def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as float32 ``H x W x 3`` RGB in [0, 1].

    Raises :class:`ImageReadError` when the file is missing, empty, truncated
    or not an image.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from None
    if not data:
        raise ImageReadError(path, "file is empty (0 bytes)")
    return decode_image(data, path)


def decode_image(data: bytes, name: object = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (see :func:`read_image`); ``name`` is for messages."""
    from PIL import Image, UnidentifiedImageError

    try:
        pil = Image.open(io.BytesIO(data))
        pil.load()  # forces the full decode: truncated files fail here
    except UnidentifiedImageError:
        arr = _cv2_decode(data)
        if arr is None:
            raise ImageReadError(name, "not a recognised image format") from None
        return _to_float_rgb(arr, name)
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, (SyntaxError, ValueError)):
            raise ImageReadError(name, f"corrupt or truncated file: {reason}") from None
        raise ImageReadError(name, reason) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"image too large: {exc}") from None

    orientation = 1
    try:
        orientation = int(pil.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make a good image unreadable
        orientation = 1

    if _is_high_bit_depth(pil, data):
        arr = _cv2_decode(data)
        if arr is None:  # OpenCV cannot: take Pillow's reading
            arr = _pil_to_array(pil)
    else:
        arr = _pil_to_array(pil)
    return _apply_orientation(_to_float_rgb(arr, name), orientation)


def _is_high_bit_depth(pil: "object", data: bytes) -> bool:
    mode = getattr(pil, "mode", "")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return True
    # 16-bit colour PNG: Pillow opens it as 8-bit "RGB"/"RGBA"; the IHDR says 16.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16:
        return True
    if getattr(pil, "format", "") == "TIFF":
        bits = getattr(pil, "tag_v2", {}).get(258)  # BitsPerSample
        if bits and max(bits if isinstance(bits, tuple) else (bits,)) > 8:
            return True
    return False


def _cv2_decode(data: bytes) -> "np.ndarray | None":
    """Decode with OpenCV keeping depth and channels; returns RGB(A)/gray or None."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        return None
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    return arr


def _pil_to_array(pil: "object") -> np.ndarray:
    mode = pil.mode
    if mode == "P":
        pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
    elif mode in ("1", "L", "LA", "RGB", "RGBA"):
        pass
    elif mode.startswith("I;16"):
        return np.asarray(pil).astype(np.uint16)
    elif mode in ("I", "F"):
        return np.asarray(pil)
    else:  # CMYK, YCbCr, LAB, HSV, PA ...
        pil = pil.convert("RGB")
    arr = np.asarray(pil)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def _to_float_rgb(arr: np.ndarray, name: object) -> np.ndarray:
    """Any decoded array -> float32 H x W x 3 in [0, 1] (alpha dropped)."""
    if arr.ndim == 3 and arr.shape[2] in (2, 4):  # gray+alpha, RGBA: drop alpha
        arr = arr[:, :, :-1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(name, f"unsupported pixel layout {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.integer):  # 32-bit "I": treat as 16-bit data
        out = np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    else:  # float images are taken to be in [0, 1] already
        out = np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
    return np.ascontiguousarray(out, dtype=np.float32)


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) so the array is upright."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1, :]
    elif orientation == 5:
        img = np.transpose(img, (1, 0, 2))
    elif orientation == 6:
        img = np.rot90(img, k=-1)
    elif orientation == 7:
        img = np.rot90(img, k=1)[::-1, :]
    elif orientation == 8:
        img = np.rot90(img, k=1)
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------- writing
def write_image(path: PathLike, img: np.ndarray, bits: int = 8, quality: int = 95) -> Path:
    """Write an RGB image atomically; the format follows the file extension.

    ``img`` is ``H x W x 3`` (or ``H x W`` gray): float in [0, 1] (clipped and
    rounded) or uint8/uint16 used as is. ``bits=16`` is for PNG/TIFF only.
    Parent folders are created. Returns the path written.
    """
    import cv2

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"):
        raise EdgehazeError(f"{path}: cannot write images with extension '{ext}'; use .png, .jpg or .bmp")
    if bits not in (8, 16):
        raise EdgehazeError(f"{path}: bits must be 8 or 16, not {bits}")
    if bits == 16 and ext not in _WRITE_16BIT:
        raise EdgehazeError(f"{path}: 16-bit output needs a .png or .tif file, not '{ext}'")
    arr = _to_storage(np.asarray(img), bits, path)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[:, :, ::-1])  # RGB -> BGR for OpenCV
    params: list = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    ok, encoded = cv2.imencode(ext, arr, params)
    if not ok:
        raise EdgehazeError(f"{path}: OpenCV could not encode the image as '{ext}'")
    atomic_write_bytes(path, encoded.tobytes())
    return path


def _to_storage(arr: np.ndarray, bits: int, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise EdgehazeError(f"{path}: expected an H x W x 3 RGB image, got shape {arr.shape}")
    target = np.uint8 if bits == 8 else np.uint16
    top = 255.0 if bits == 8 else 65535.0
    if arr.dtype == np.uint8:
        return arr if bits == 8 else arr.astype(np.uint16) * 257
    if arr.dtype == np.uint16:
        return arr if bits == 16 else np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise EdgehazeError(f"{path}: unsupported image dtype {arr.dtype}; pass float in [0, 1] or uint8")
    scaled = np.round(np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0) * top)
    return scaled.astype(target)


# --------------------------------------------------------------------- listing
def natural_key(path: PathLike) -> list:
    """Sort key that orders ``img2`` before ``img10`` (digits compared as numbers)."""
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts]


def is_image_file(path: PathLike) -> bool:
    """True when the name ends with one of :data:`IMAGE_EXTENSIONS` (not hidden)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(source: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Image files from a folder, a glob pattern, one file, or a list of those.

    Sorted naturally; folders are not searched recursively. A folder or
    pattern that yields nothing returns an empty list (callers decide whether
    that is an error); a named file that does not exist is an error.
    """
    if isinstance(source, (str, os.PathLike)):
        sources: List[PathLike] = [source]
    else:
        sources = list(source)
    found: List[Path] = []
    for item in sources:
        p = Path(item)
        if p.is_dir():
            found.extend(c for c in p.iterdir() if c.is_file() and is_image_file(c))
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(str(item)):
            found.extend(Path(m) for m in glob.glob(str(item)) if is_image_file(m) and Path(m).is_file())
        else:
            raise EdgehazeError(f"{item}: no such file or folder")
    unique = {str(p): p for p in found}
    return sorted(unique.values(), key=natural_key)


# --------------------------------------------------------------------- tensors
def to_tensor(img: np.ndarray) -> "torch.Tensor":
    """``H x W x 3`` array in [0, 1] -> float32 tensor ``1 x 3 x H x W``."""
    import torch

    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(0)


def to_image(tensor: "torch.Tensor") -> np.ndarray:
    """Tensor ``1 x 3 x H x W`` or ``3 x H x W`` -> float32 ``H x W x 3`` clipped to [0, 1]."""
    t = tensor.detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"to_image takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W tensor, got shape {tuple(tensor.shape)}")
    return np.ascontiguousarray(t.clamp(0.0, 1.0).numpy().transpose(1, 2, 0), dtype=np.float32)
