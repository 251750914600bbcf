"""Image validation and the one grayscale conversion, on real files written in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data.images import BadImageError, read_gray8


def gradient(size: int = 32) -> np.ndarray:
    """An 8-bit image using the full 0..255 range."""
    row = np.linspace(0, 255, size).round().astype(np.uint8)
    return np.tile(row, (size, 1))


def test_every_mode_gives_the_same_gray_pixels(tmp_path: Path) -> None:
    pixels = gradient()
    gray = Image.fromarray(pixels, mode="L")
    rgba = gray.convert("RGBA")
    variants = {
        "rgb.png": gray.convert("RGB"),
        "rgba.png": rgba,
        "palette.png": gray.convert("P"),
        "l16.png": Image.fromarray(pixels.astype(np.uint16) * 257),  # 16-bit, 0..65535
        "jpeg-like.bmp": gray.convert("RGB"),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
        got = read_gray8(tmp_path / name)
        assert got.mode == "L", name
        assert np.array_equal(np.asarray(got), pixels), name


def test_transparent_pixels_become_black(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    got = np.asarray(read_gray8(tmp_path / "a.png"))
    assert (got[:4] == 200).all()
    assert (got[4:] == 0).all()


def bad_files(folder: Path) -> dict[str, str]:
    """Write each kind of unusable file; return name -> the reason read_gray8 must give."""
    Image.fromarray(gradient(64)).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image\n")
    # 8100 x 8100 = 65.6 Mpx of 1-bit zeros: a few KiB on disk, over the 64 Mpx cap.
    Image.new("1", (8100, 8100)).save(folder / "bomb.png")
    (folder / "whole.png").unlink()
    return {
        "truncated.png": "not a readable image",
        "empty.png": r"empty file \(0 bytes\)",
        "text.png": "not a readable image",
        "bomb.png": "refused as a decompression bomb",
    }


def test_bad_files_raise_naming_file_and_reason(tmp_path: Path) -> None:
    for name, reason in bad_files(tmp_path).items():
        before = (tmp_path / name).read_bytes()
        with pytest.raises(BadImageError, match=rf"{name}: {reason}"):
            read_gray8(tmp_path / name)
        assert (tmp_path / name).read_bytes() == before  # never modified


def test_16bit_png_decodes_without_float_copies(tmp_path: Path) -> None:
    # issue 16, case 11: a 1.4 MB 16-bit PNG took 1.75 GB to decode: float64 copies of every
    # pixel (8 bytes each, several at once). numpy's allocations are traced by tracemalloc.
    import tracemalloc

    side = 2048
    ramp = np.add.outer(np.arange(side), np.arange(side)).astype(np.uint16) * 7 + 1000
    Image.fromarray(ramp).save(tmp_path / "wide.png")  # mode I;16
    tracemalloc.start()
    try:
        got = read_gray8(tmp_path / "wide.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # bytes per pixel: Pillow's copy of the 16-bit pixels (its tobytes joins chunks: up to 4)
    # and the 8-bit result; the float64 arithmetic took 25.
    assert peak / side**2 < 6
    low, high = int(ramp.min()), int(ramp.max())
    expected = np.round((ramp - low) * (255.0 / (high - low))).astype(np.uint8)
    assert np.array_equal(np.asarray(got), expected)
