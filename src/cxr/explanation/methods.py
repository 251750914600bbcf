"""The gradcam stage's second half: Grad-CAM, Grad-CAM++, LIME (and a random reference) on a
spread of test images, their faithfulness scores (cxr.explanation.faithfulness), and figures
that show
the methods side by side (plots/gradcam/methods/<Class>_{correct,wrong}.png).

Maps are of the predicted class, computed on the model's own input (resized, preprocessed).
Figures show that input, not the original file, so what is explained is what is drawn; each
map is scaled to its own maximum of positive evidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cxr.core.config import GradcamConfig
from cxr.core.fsio import atomic_dir, save_figure
from cxr.core.progress import Stopwatch
from cxr.explanation.faithfulness import (
    SALIENCY,
    Explainers,
    faithfulness_report,
    pick_images,
    score_methods,
)
from cxr.explanation.figures import CAM_CMAP, GRADCAM_OUTCOMES, short_name
from cxr.explanation.lime_explain import display_scaled
from cxr.training.pixels import PixelSet


def explain_and_score(
    model: nn.Module,
    arch: str,
    layer: nn.Module,
    test: PixelSet,
    cfg: GradcamConfig,
    device: torch.device,
    folder: Path,
    resamples: int = 1000,
    predicted: np.ndarray | None = None,
    known: dict[str, np.ndarray] | None = None,
    watch: Stopwatch | None = None,
) -> dict[str, Any]:
    """Score `cfg.faithfulness.methods` on up to `cfg.faithfulness.images` test images, draw
    up to `cfg.lime.images_per_class` of them per class and outcome into `folder`, and return
    the faithfulness report (empty when `images` is 0).

    `predicted` (the predicted class of every test image) and `known` (method name → its maps
    of those classes for every test image) are used instead of computing them again where
    given; `watch` (if given) gets the seconds of LIME, of the other methods' maps, of the
    curves and of the figures, under the names `cost_parts` gives them."""
    fcfg, lcfg = cfg.faithfulness, cfg.lime
    labels = test.labels.numpy()
    chosen = pick_images(labels, fcfg.images, fcfg.seed)
    if not len(chosen):
        return {}
    watch = watch or Stopwatch()
    ctx = Explainers(model, arch, layer, device, lcfg.num_samples, lcfg.segments, fcfg.seed)
    pixels = test.pixels[torch.from_numpy(chosen)]
    scoring = Stopwatch()
    maps, scores, predicted = score_methods(
        ctx,
        pixels,
        fcfg.methods,
        fcfg.steps,
        None if predicted is None else np.asarray(predicted)[chosen],
        {name: value[chosen] for name, value in (known or {}).items()},
        scoring,
    )
    for name, seconds in cost_parts(cfg, scoring.parts, len(chosen)).items():
        watch.add(name, seconds)
    report = faithfulness_report(scores, resamples, seed=fcfg.seed)
    report["steps"] = fcfg.steps
    report["files"] = [test.files[i].name for i in chosen]
    shown = [name for name in fcfg.methods if not SALIENCY[name].reference]
    if lcfg.images_per_class and shown:
        with watch.part("method figures"):
            write_method_grids(
                folder,
                [test.files[i] for i in chosen],
                pixels[:, 0].numpy(),
                labels[chosen],
                predicted,
                {name: maps[name] for name in shown},
                test.classes,
                lcfg.images_per_class,
            )
    return report


def cost_parts(cfg: GradcamConfig, timings: dict[str, float], images: int) -> dict[str, float]:
    """`score_methods`' timings (per method and `faithfulness`) under the names the stage
    prints, each saying what its work was: LIME with its sample count, the other methods'
    maps together, the curves with their size."""
    fcfg, timings = cfg.faithfulness, dict(timings)
    parts = {}
    if "lime" in timings:
        parts[f"LIME ({images} images x {cfg.lime.num_samples} samples)"] = timings.pop("lime")
    others = [name for name in fcfg.methods if name in timings]
    if others:
        parts[f"{'/'.join(others)} maps"] = sum(timings.pop(name) for name in others)
    if "faithfulness" in timings:
        label = (
            f"faithfulness ({images} images x {len(fcfg.methods)} methods x 2 curves x "
            f"{fcfg.steps + 1} steps)"
        )
        parts[label] = timings.pop("faithfulness")
    return {**parts, **timings}


def method_grid(
    images: np.ndarray, maps: dict[str, np.ndarray], captions: list[str], title: str
) -> Figure:
    """One row per image: the model's input, then each method's map over it."""
    columns = ["model input", *(SALIENCY[name].title for name in maps)]
    rows = len(images)
    figure = Figure(figsize=(2.4 * len(columns), 2.5 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, len(columns), squeeze=False)
    for r in range(rows):
        for c, name in enumerate(columns):
            axis = axes[r, c]
            axis.imshow(images[r], cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
            if c:
                cam = display_scaled(list(maps.values())[c - 1][r])
                axis.imshow(cam, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=0.6 * cam)
            axis.set_title(name if r == 0 else "", fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[r, 0].set_ylabel(captions[r], fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def write_method_grids(
    folder: Path,
    files: list[Path],
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    maps: dict[str, np.ndarray],
    classes: tuple[str, ...],
    per_class: int,
) -> None:
    """`folder`/<Class>_{correct,wrong}.png: up to `per_class` images each, methods side by
    side (maps of the predicted class, positive evidence, each over its own maximum)."""
    with atomic_dir(folder) as out:
        for k, name in enumerate(classes):
            for outcome, wanted in zip(GRADCAM_OUTCOMES, (True, False), strict=True):
                rows = np.flatnonzero((labels == k) & ((predicted == labels) == wanted))
                rows = rows[:per_class]
                if not len(rows):
                    continue
                captions = [
                    f"{short_name(files[i].name, 24)}\ntrue {name}\npredicted "
                    f"{classes[predicted[i]]}"
                    for i in rows
                ]
                title = (
                    f"{name}, {outcome}ly classified: explanations of the predicted class "
                    "(positive evidence, each map over its own maximum)"
                )
                figure = method_grid(
                    images[rows], {m: v[rows] for m, v in maps.items()}, captions, title
                )
                save_figure(figure, out / f"{name}_{outcome}.png")
