"""Reading images the one way the whole project reads them.

Every image, whatever its mode (16-bit, RGB, RGBA, palette), becomes 8-bit grayscale through
`to_gray8`, so the download stage, training, evaluation and `predict` all see the same pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cxr.core.errors import CxrError

# A chest X-ray is < 20 Mpx, so anything far beyond is hostile or broken. Checked from the header,
# before decoding; Pillow's own guard (a warning from ~89 Mpx, refused here too, and an error from
# ~179 Mpx) is left as it is: setting Image.MAX_IMAGE_PIXELS would change it for the whole process.
MAX_PIXELS = 64_000_000


class BadImageError(CxrError, ValueError):
    """A file that is not a usable image; the message names the file and the reason."""


WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
# Pixels per block when stretching 32-bit or float images: bounds the float64 temporaries.
_BLOCK = 1 << 20


def _stretch_16bit(array: np.ndarray) -> np.ndarray:
    """uint16 → uint8 through a 65,536-entry lookup table: no per-pixel float temporaries
    (a float64 copy of a 50 Mpx image is 400 MB, and the arithmetic made several)."""
    low, high = int(array.min()), int(array.max())
    lut = np.zeros(1 << 16, dtype=np.uint8)
    if high > low:
        values = np.arange(low, high + 1, dtype=np.float64)
        # the same arithmetic as `_stretch_blocks`, so every mode maps a value the same way
        lut[low : high + 1] = np.round((values - low) * (255.0 / (high - low)))
    return lut[array]


def _stretch_blocks(array: np.ndarray) -> np.ndarray:
    """Any numeric array → uint8, its used range stretched to 0..255, a block at a time."""
    low, high = float(array.min()), float(array.max())
    flat, out = array.reshape(-1), np.zeros(array.size, dtype=np.uint8)
    if high > low:
        for start in range(0, flat.size, _BLOCK):
            block = flat[start : start + _BLOCK].astype(np.float64)
            out[start : start + _BLOCK] = np.round((block - low) * (255.0 / (high - low)))
    return out.reshape(array.shape)


def to_gray8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit grayscale ('L')."""
    if image.mode == "L":
        return image
    if image.mode in WIDE_MODES:
        # Stretch the used range to 0..255: 16-bit X-rays rarely use the full 65535 scale.
        array = np.asarray(image)
        if array.dtype.kind in "iu" and array.min() >= 0 and array.max() < 1 << 16:
            gray = _stretch_16bit(array.astype(np.uint16, copy=False))
        else:
            gray = _stretch_blocks(array)
        return Image.fromarray(gray, mode="L")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, as on an X-ray film.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("L")


def read_gray8(path: Path | str) -> Image.Image:
    """Open, fully decode and convert one image; BadImageError names the file if it can't."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its own limit; we refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(
                        f"{image.width}x{image.height} pixels, over the {MAX_PIXELS} allowed"
                    )
                # decode now: truncated files fail here, not later in training
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # no second decoded copy
                return to_gray8(image)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{path}: refused as a decompression bomb ({err})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(f"{path}: not a readable image ({err})") from None


def read_mask(path: Path | str) -> Image.Image:
    """A binary mask as 'L' with values 0 and 255."""
    gray = read_gray8(path)
    return gray.point(lambda value: 255 if value >= 128 else 0)


def save_png(image: Image.Image, path: Path, compress_level: int = 6) -> None:
    """PNG with fixed settings, so equal pixels give equal bytes. PNG is lossless at every
    level; a low level trades file size for encoding time (most of augment's time)."""
    image.save(path, format="PNG", optimize=False, compress_level=compress_level)
