"""Intensity preprocessing of X-rays (`preprocess.method`), with scikit-image.

One registry (`PREPROCESSING`) of operations on the resized uint8 image, applied at the single
decode-and-resize point (`cxr.training.pixels.preprocess`), so training, evaluation, Grad-CAM,
LIME, embeddings and `cxr-predict` see the same pixels. The train stage stores the settings in
the model card (`ModelCard.preprocessing`) and every later consumer reads them from there, never
from params.yaml, so a checkpoint cannot be used with other preprocessing than it was trained
with. The pixel store's key includes them (`Preprocessing.key`).

- `none`: the 8-bit grayscale image as decoded.
- `clahe`: contrast-limited adaptive histogram equalisation (Zuiderveld, 1994),
  `skimage.exposure.equalize_adapthist` with `clahe.clip_limit` (normalised, 0-1) over
  `clahe.tiles` x `clahe.tiles` contextual regions.
- `equalize`: global histogram equalisation, `skimage.exposure.equalize_hist` (256 bins).
- `white_balance`: the "simplest colour balance" (Limare et al., IPOL 2011) of a grayscale
  image: the darkest and brightest `white_balance.saturation` percent are clipped and the rest
  stretched to 0-255 (`skimage.exposure.rescale_intensity`). On one channel, white balancing is
  exactly this stretch.

Why scikit-image rather than OpenCV: it is pure Python over numpy and scipy (already needed by
scikit-learn), ships no video/GUI native libraries, is a dependency of `lime` anyway, and its
functions take documented, resolution-independent parameters (CLAHE's clip limit as a fraction
and its kernel as a share of the image). OpenCV's CLAHE is faster, but each image is processed
once, into the pixel store (cxr.training.cache), so speed does not matter here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxr.core.registry import Registry

# Bump when an operation's output changes for the same settings: pixel stores built by older
# code are then rebuilt instead of reused.
VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    """The settings of one preprocessing (what the model card stores)."""

    method: str = "none"
    clip_limit: float = 0.01  # clahe
    tiles: int = 8  # clahe: contextual regions per side
    saturation: float = 1.0  # white_balance: percent clipped at each end

    @classmethod
    def from_config(cls, cfg: Any) -> Preprocessing:
        """From params.yaml's `preprocess` section (cxr.core.config.PreprocessConfig)."""
        return cls(cfg.method, cfg.clahe.clip_limit, cfg.clahe.tiles, cfg.white_balance.saturation)

    @classmethod
    def from_card(cls, raw: Mapping[str, Any] | None) -> Preprocessing:
        """From a model card's `preprocessing` (absent in checkpoints older than it: none)."""
        return cls(**dict(raw)) if raw else cls()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """What the pixel store's key includes: only what changes the pixels."""
        if self.method == "none":
            return "none"
        return json.dumps({"v": VERSION, **self.as_dict()}, sort_keys=True)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A 2-D uint8 image → the preprocessed 2-D uint8 image of the same shape."""
        return PREPROCESSING[self.method].apply(image, self)

    def describe(self) -> str:
        return PREPROCESSING[self.method].describe(self)


@dataclass(frozen=True)
class Method:
    """One preprocessing method: the operation and how to describe its settings."""

    apply: Callable[[np.ndarray, Preprocessing], np.ndarray]
    describe: Callable[[Preprocessing], str]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] → uint8, rounded (not truncated)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _none(image: np.ndarray, settings: Preprocessing) -> np.ndarray:
    return image


def _clahe(image: np.ndarray, settings: Preprocessing) -> np.ndarray:
    from skimage.exposure import equalize_adapthist

    kernel = tuple(max(2, side // settings.tiles) for side in image.shape)
    return _to_uint8(equalize_adapthist(image, kernel_size=kernel, clip_limit=settings.clip_limit))


def _equalize(image: np.ndarray, settings: Preprocessing) -> np.ndarray:
    from skimage.exposure import equalize_hist

    if image.min() == image.max():  # a constant image has no histogram to spread
        return image
    return _to_uint8(equalize_hist(image, nbins=256))


def _white_balance(image: np.ndarray, settings: Preprocessing) -> np.ndarray:
    from skimage.exposure import rescale_intensity

    low, high = np.percentile(image, (settings.saturation, 100.0 - settings.saturation))
    if high <= low:  # (almost) constant image: nothing to stretch
        return image
    stretched = rescale_intensity(image, in_range=(float(low), float(high)), out_range=(0, 255))
    return np.clip(np.rint(stretched), 0, 255).astype(np.uint8)


# preprocess.method -> the operation on a resized uint8 image and its description.
PREPROCESSING: Registry[Method] = Registry("preprocessing method", "preprocess.method")
PREPROCESSING.register("none", Method(_none, lambda s: "none"))
PREPROCESSING.register(
    "clahe",
    Method(_clahe, lambda s: f"CLAHE (clip {s.clip_limit:g}, {s.tiles}x{s.tiles} tiles)"),
)
PREPROCESSING.register("equalize", Method(_equalize, lambda s: "histogram equalisation"))
PREPROCESSING.register(
    "white_balance",
    Method(_white_balance, lambda s: f"white balance ({s.saturation:g}% clipped each end)"),
)
