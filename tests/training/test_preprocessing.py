"""Preprocessing (cxr.training.preprocessing): each method against an independent computation
on a real X-ray, the pixel store's key, and the model card carrying it into cxr-predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.core.config import ParamsError, parse_params
from cxr.data.images import read_gray8
from cxr.training import cache
from cxr.training.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from cxr.training.inference import Normalize
from cxr.training.models import build_model
from cxr.training.pixels import load_pixels, preprocess
from cxr.training.preprocessing import PREPROCESSING, Preprocessing
from tests.helpers.project import project_params

SIZE = 96


@pytest.fixture(scope="module")
def xray(real_images: list[Path]) -> np.ndarray:
    return preprocess(read_gray8(real_images[0]), SIZE)


def test_every_method_keeps_shape_and_dtype_and_none_is_the_identity(xray: np.ndarray):
    for method in PREPROCESSING:
        out = Preprocessing(method).apply(xray)
        assert out.shape == xray.shape and out.dtype == np.uint8, method
    assert np.array_equal(Preprocessing("none").apply(xray), xray)


def test_equalize_maps_each_level_to_its_cumulative_share(xray: np.ndarray):
    out = Preprocessing("equalize").apply(xray)
    # independently: a level's output is 255 x the share of pixels at or below it
    below = np.searchsorted(np.sort(xray.ravel()), xray, side="right") / xray.size
    assert np.abs(out.astype(int) - np.rint(below * 255)).max() <= 2
    levels = np.arange(256)
    cdf = np.searchsorted(np.sort(out.ravel()), levels, side="right") / out.size
    assert np.abs(cdf - (levels + 1) / 256).max() < 0.06  # a flat histogram


def test_white_balance_is_the_percentile_stretch(xray: np.ndarray):
    settings = Preprocessing("white_balance", saturation=2.0)
    low, high = np.percentile(xray, (2.0, 98.0))
    expected = np.clip(np.rint((xray - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
    assert np.abs(settings.apply(xray).astype(int) - expected).max() <= 1
    assert settings.apply(xray).min() == 0 and settings.apply(xray).max() == 255


def test_clahe_raises_local_contrast_more_with_a_higher_clip_limit(xray: np.ndarray):
    def local_contrast(image: np.ndarray) -> float:  # mean std of 12x12 tiles
        tiles = image.reshape(8, 12, 8, 12).swapaxes(1, 2).reshape(64, -1).astype(float)
        return float(tiles.std(axis=1).mean())

    weak = Preprocessing("clahe", clip_limit=0.005).apply(xray)
    strong = Preprocessing("clahe", clip_limit=0.05).apply(xray)
    assert local_contrast(xray) < local_contrast(weak) < local_contrast(strong)


def test_constant_images_pass_unchanged():
    flat = np.full((32, 32), 77, np.uint8)
    for method in ("equalize", "white_balance"):
        assert np.array_equal(Preprocessing(method).apply(flat), flat)


def test_pixel_store_key_depends_on_preprocessing(real_images: list[Path]):
    files = tuple(real_images[:2])
    root = files[0].parents[2]
    keys = {
        prep.key(): cache.store_key(root, files, (0, 1), 64, prep.key())
        for prep in (Preprocessing(), Preprocessing("clahe"), Preprocessing("clahe", tiles=4))
    }
    assert len(set(keys.values())) == 3
    # without preprocessing the key is the one stores built before it existed had
    assert keys["none"] == cache.store_key(root, files, (0, 1), 64)


def test_unknown_method_is_a_params_error_naming_the_key():
    raw = project_params()
    raw["preprocess"]["method"] = "sharpen"
    with pytest.raises(
        ParamsError, match=r"preprocess\.method: unknown preprocessing method 'sharpen'"
    ):
        parse_params(raw, registries=(PREPROCESSING,))


def test_checkpoint_carries_preprocessing_into_predict(real_images: list[Path], tmp_path: Path):
    from cxr.predict import predict_files

    torch.manual_seed(0)
    prep = Preprocessing("clahe", clip_limit=0.03, tiles=4)
    card = ModelCard("resnet18", ("A", "B", "C"), 48, "none", 1, preprocessing=prep.as_dict())
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model("resnet18", 3), card)
    model, loaded = load_checkpoint(path)
    assert loaded.prep == prep
    (result,) = predict_files([real_images[0]], path)
    # independently: resize, CLAHE, normalise, forward
    pixels = prep.apply(preprocess(read_gray8(real_images[0]), 48))
    with torch.no_grad():
        expected = model(Normalize("resnet18")(torch.from_numpy(pixels)[None, None])).softmax(1)
    assert list(result.probabilities.values()) == pytest.approx(expected[0].tolist(), abs=1e-5)
    plain = load_pixels((real_images[0],), 48)
    assert not torch.equal(plain, load_pixels((real_images[0],), 48, prep=prep))
