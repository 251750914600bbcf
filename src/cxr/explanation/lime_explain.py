"""LIME (Ribeiro et al., 2016) for the classifier, with the `lime` package, beside Grad-CAM.

The image (the model's own input: resized and preprocessed, cxr.training.pixels.preprocess) is
cut into SLIC superpixels (`gradcam.lime.segments`); LIME switches random subsets of them to
black (`hide_color=0`), scores `gradcam.lime.num_samples` such copies with the model, and fits
a locally weighted linear model of the class probability on which superpixels were on. A
superpixel's coefficient is its evidence for the class; the map gives every pixel its
superpixel's coefficient (signed: negative is evidence against).

Each image's explanation is seeded by (seed, image index), so it does not depend on which
other images are explained or in which order.

Cost: one forward pass per sample and image, nearly all of LIME's time. The perturbed copies
are built at once (`batched_data_labels`: lime's own random draws and copies, without its
per-sample loop) and handed to the classifier `LIME_BATCH` at a time (lime's default: 10); it
runs them under inference mode in the chunks the device is fastest with
(cxr.explanation.scoring). SLIC runs once per image.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.core.progress import progress
from cxr.explanation.scoring import Scorer

# Compactness of SLIC on 0-255 intensities: lower follows edges (ribs, heart border) more.
SLIC_COMPACTNESS = 10.0

# Perturbed copies handed to the classifier per call (lime's default is 10); the classifier
# splits them into the batches its device and image size run fastest in. Bounds the copies
# held at once (224 px: 38 MB).
LIME_BATCH = 256


Predict = Callable[[np.ndarray], np.ndarray]


def classifier_fn(
    model: nn.Module, arch: str, device: torch.device, batch_size: int | None = None
) -> Predict:
    """LIME's classifier: a batch of (n, H, W, 3) images of identical channels → (n, C)
    softmax probabilities, through the model's own normalisation, in chunks of `batch_size`
    (default: by device and image size, cxr.explanation.scoring) under inference mode."""
    scorer = Scorer(model, arch, device, batch_size)

    def predict(images: np.ndarray) -> np.ndarray:
        return scorer(np.ascontiguousarray(images[..., 0], dtype=np.uint8))

    return predict


def batched_data_labels(
    explainer: Any,
    image: np.ndarray,
    fudged_image: np.ndarray,
    segments: np.ndarray,
    classifier_fn: Predict,
    num_samples: int,
    batch_size: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """lime's `LimeImageExplainer.data_labels` (0.2.0.1) with the perturbed copies built at
    once: the same random draws, the same copies (pixels of switched-off superpixels from the
    fudged image), the same calls of `classifier_fn` with up to `batch_size` copies each;
    without lime's Python loop over samples and superpixels (and its progress bar)."""
    n_features = np.unique(segments).shape[0]
    data = explainer.random_state.randint(0, 2, num_samples * n_features).reshape(
        (num_samples, n_features)
    )
    data[0, :] = 1
    # lime hides the pixels whose segment label is a switched-off column index; labels beyond
    # the columns (none, for SLIC's consecutive ones) are never hidden
    off = np.zeros((num_samples, max(n_features, int(segments.max()) + 1)), dtype=bool)
    off[:, :n_features] = data == 0
    labels = []
    for start in range(0, num_samples, batch_size):
        hidden = off[start : start + batch_size][:, segments][..., None]
        labels.append(classifier_fn(np.where(hidden, fudged_image, image)))
    return data, np.concatenate(labels)


@cache
def batched_lime() -> type:
    """`LimeImageExplainer` with `batched_data_labels` (lime is imported on first use: it
    loads scikit-learn and scikit-image)."""
    from lime.lime_image import LimeImageExplainer

    return type("BatchedLime", (LimeImageExplainer,), {"data_labels": batched_data_labels})


def lime_map(
    predict: Predict,
    pixels: np.ndarray,
    target: int,
    num_samples: int,
    segments: int,
    seed: int,
    batch_size: int = LIME_BATCH,
    explainer_class: type | None = None,
) -> np.ndarray:
    """The (H, W) LIME map of class `target` for one uint8 (H, W) image. `explainer_class`:
    lime's explainer to use (default `batched_lime()`; lime's own one builds and scores the
    same copies sample by sample)."""
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    segmenter = SegmentationAlgorithm(
        "slic",
        n_segments=segments,
        compactness=SLIC_COMPACTNESS,
        sigma=1.0,
        start_label=0,
        random_seed=seed,
    )
    explainer = (explainer_class or batched_lime())(random_state=seed)
    explanation = explainer.explain_instance(
        np.stack([pixels] * 3, axis=-1),
        predict,
        labels=(target,),
        top_labels=None,
        hide_color=0,
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=segmenter,
        random_seed=seed,
    )
    weights = np.zeros(int(explanation.segments.max()) + 1)
    for segment, weight in explanation.local_exp[target]:
        weights[segment] = weight
    return weights[explanation.segments].astype(np.float32)


def lime_maps(
    model: nn.Module,
    arch: str,
    pixels: torch.Tensor,
    targets: np.ndarray,
    num_samples: int,
    segments: int,
    seed: int,
    device: torch.device,
    desc: str = "",
    batch_size: int | None = None,
) -> np.ndarray:
    """LIME maps (N, H, W) of `targets` for a uint8 (N, 1, H, W) batch (progress under
    `desc`, if given; `batch_size`: images per forward pass, default the device's)."""
    model.eval()
    predict = classifier_fn(model, arch, device, batch_size)
    rows = range(len(pixels))
    maps = [
        lime_map(
            predict,
            pixels[i, 0].numpy(),
            int(targets[i]),
            num_samples,
            segments,
            seed * 100_003 + i,
        )
        for i in (progress(rows, desc, unit="images") if desc else rows)
    ]
    return np.stack(maps) if maps else np.zeros((0, *pixels.shape[-2:]), np.float32)


def display_scaled(saliency: np.ndarray) -> np.ndarray:
    """A signed map → [0, 1] for an overlay: positive evidence over its own maximum."""
    positive = np.clip(saliency, 0.0, None)
    peak = positive.max()
    return positive / peak if peak > 0 else positive
