"""Image reading/writing: every format quirk ends as float32 H x W x 3 RGB in [0, 1]."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgehaze.errors import EdgehazeError, ImageReadError
from edgehaze.imageio import list_images, read_image, to_image, to_tensor, write_image


def _rgb(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_png_roundtrip_8bit_exact(tmp_path: Path) -> None:
    img = _rgb()
    write_image(tmp_path / "a.png", img)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.float32 and back.shape == (12, 16, 3)
    assert np.array_equal(np.round(back * 255).astype(np.uint8), img)


def test_float_input_is_clipped_and_rounded(tmp_path: Path) -> None:
    img = np.full((4, 5, 3), 0.5, np.float32)
    img[0, 0] = [-0.3, 1.7, 0.1]
    write_image(tmp_path / "f.bmp", img)
    back = np.round(read_image(tmp_path / "f.bmp") * 255).astype(int)
    assert back[0, 0].tolist() == [0, 255, 26]
    assert back[1, 1].tolist() == [128, 128, 128]


def test_16bit_png_keeps_precision(tmp_path: Path) -> None:
    img = np.random.default_rng(1).random((9, 7, 3)).astype(np.float32)
    write_image(tmp_path / "d.png", img, bits=16)
    back = read_image(tmp_path / "d.png")
    assert np.abs(back - img).max() < 1.0 / 65535 + 1e-6  # far finer than 8-bit's 1/510


def test_16bit_gray_png(tmp_path: Path) -> None:
    gray = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    back = read_image(tmp_path / "g16.png")
    assert back.shape == (4, 5, 3)
    assert np.allclose(back[:, :, 0], gray / 65535.0, atol=1e-6)
    assert np.array_equal(back[:, :, 0], back[:, :, 2])


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(), np.full((12, 16), 10, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    back = read_image(tmp_path / "x.png")
    assert np.array_equal(np.round(back * 255).astype(np.uint8), rgba[:, :, :3])


def test_gray_to_three_channels(tmp_path: Path) -> None:
    g = _rgb()[:, :, 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    back = read_image(tmp_path / "g.png")
    assert back.shape == (12, 16, 3)
    assert np.array_equal(np.round(back[:, :, 1] * 255).astype(np.uint8), g)


def test_palette_expanded(tmp_path: Path) -> None:
    rgb = Image.fromarray(_rgb(8, 8))
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.png")
    back = read_image(tmp_path / "p.png")
    expect = np.asarray(pal.convert("RGB"))
    assert np.array_equal(np.round(back * 255).astype(np.uint8), expect)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # stored 8 wide x 4 high, left half black, tagged "rotate 90 CW to view" (6)
    stored = np.zeros((4, 8, 3), np.uint8)
    stored[:, 4:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    back = read_image(tmp_path / "r.jpg")
    assert back.shape == (8, 4, 3)  # upright: taller than wide
    # rotating CW moves the stored left (black) half to the top
    assert back[:3].mean() < 0.2 and back[5:].mean() > 0.8


def test_truncated_png_raises(tmp_path: Path) -> None:
    write_image(tmp_path / "t.png", _rgb(64, 64))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "t.png")
    assert "t.png" in str(err.value)


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    write_image(tmp_path / "t.jpg", _rgb(64, 64))
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "t.jpg")


@pytest.mark.parametrize("content", [b"", b"this is not an image at all"])
def test_empty_or_garbage_raises(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "bad.png")
    assert isinstance(err.value, EdgehazeError)
    assert err.value.path == tmp_path / "bad.png"


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_non_utf8_file_name(tmp_path: Path) -> None:
    name = os.fsdecode(b"haze_\xff\xfe.png")  # undecodable bytes, surrogate-escaped
    path = tmp_path / name
    try:
        write_image(path, _rgb())
    except (UnicodeEncodeError, OSError):
        pytest.skip("file system refuses non-UTF-8 names")
    assert np.array_equal(np.round(read_image(path) * 255).astype(np.uint8), _rgb())
    assert path in list_images(tmp_path)


def test_atomic_write_leaves_no_temp_and_creates_dirs(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "c.jpg"
    write_image(out, _rgb())
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["c.jpg"]


def test_write_rejects_16bit_jpeg(tmp_path: Path) -> None:
    with pytest.raises(EdgehazeError, match="16-bit"):
        write_image(tmp_path / "x.jpg", _rgb(), bits=16)


def test_list_images_natural_sort_and_glob(tmp_path: Path) -> None:
    for n in ["img10.png", "img2.png", "img1.jpg", "notes.txt", ".hidden.png"]:
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["img1.jpg", "img2.png", "img10.png"]
    assert [p.name for p in list_images(str(tmp_path / "*.png"))] == ["img2.png", "img10.png"]
    assert len(list_images([tmp_path / "img2.png", tmp_path / "img1.jpg"])) == 2
    with pytest.raises(EdgehazeError):
        list_images(tmp_path / "missing_dir")


def test_tensor_roundtrip() -> None:
    img = _rgb().astype(np.float32) / 255
    t = to_tensor(img)
    assert tuple(t.shape) == (1, 3, 12, 16)
    assert np.array_equal(to_image(t), img)
    assert to_image(t * 3).max() == 1.0
