"""LIME (Ribeiro et al., 2016) for the classifier, with the `lime` package, beside Grad-CAM.

The image (the model's own input: resized and preprocessed, cxr.training.pixels.preprocess) is
cut into SLIC superpixels (`gradcam.lime.segments`); LIME switches random subsets of them to
black (`hide_color=0`), scores `gradcam.lime.num_samples` such copies with the model, and fits
a locally weighted linear model of the class probability on which superpixels were on. A
superpixel's coefficient is its evidence for the class; the map gives every pixel its
superpixel's coefficient (signed: negative is evidence against).

Each image's explanation is seeded by (seed, image index), so it does not depend on which
other images are explained or in which order.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cxr.core.progress import progress
from cxr.training.inference import Normalize

# Compactness of SLIC on 0-255 intensities: lower follows edges (ribs, heart border) more.
SLIC_COMPACTNESS = 10.0


Predict = Callable[[np.ndarray], np.ndarray]


def classifier_fn(model: nn.Module, arch: str, device: torch.device) -> Predict:
    """LIME's classifier: a batch of (n, H, W, 3) images of identical channels → (n, C)
    softmax probabilities, through the model's own normalisation."""
    normalize = Normalize(arch).to(device)

    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        gray = np.ascontiguousarray(images[..., 0], dtype=np.uint8)[:, None]
        inputs = normalize(torch.from_numpy(gray).to(device))
        return model(inputs).float().softmax(1).cpu().numpy()

    return predict


def lime_map(
    predict: Predict,
    pixels: np.ndarray,
    target: int,
    num_samples: int,
    segments: int,
    seed: int,
    batch_size: int = 64,
) -> np.ndarray:
    """The (H, W) LIME map of class `target` for one uint8 (H, W) image."""
    from lime.lime_image import LimeImageExplainer
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    segmenter = SegmentationAlgorithm(
        "slic",
        n_segments=segments,
        compactness=SLIC_COMPACTNESS,
        sigma=1.0,
        start_label=0,
        random_seed=seed,
    )
    explainer = LimeImageExplainer(random_state=seed)
    # lime 0.2.0.1 always draws a tqdm bar on stderr; stages print their own progress.
    with contextlib.redirect_stderr(io.StringIO()):
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
) -> np.ndarray:
    """LIME maps (N, H, W) of `targets` for a uint8 (N, 1, H, W) batch (progress under
    `desc`, if given)."""
    model.eval()
    predict = classifier_fn(model, arch, device)
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
