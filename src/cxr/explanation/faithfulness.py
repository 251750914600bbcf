"""How faithful an explanation is to the model: deletion and insertion AUC (Petsiuk et al.,
RISE, BMVC 2018), for the saliency methods of `SALIENCY` (Grad-CAM, Grad-CAM++, LIME) and a
random map as the reference (`gradcam.faithfulness.methods` names them).

Pixels are ranked by a method's saliency for the predicted class (ties broken at random,
seeded: LIME's superpixels tie whole regions, and a scan-order tie-break would remove the top
rows first). Deletion sets the top 0, 1/steps, ..., all of the pixels to black (0) and follows
the class probability: a map that found what the model uses makes it fall fast (low AUC).
Insertion starts from a blurred copy and puts the top pixels back: the probability should
rise fast (high AUC). AUC is the trapezoid area over the fraction of pixels, in [0, 1]. Each
method's mean over the scored test images comes with a seeded percentile bootstrap interval,
and its lead over the random map with a paired one (same resampled images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from cxr.core.registry import Registry
from cxr.explanation.gradcam import METHODS, compute_cams
from cxr.explanation.lime_explain import lime_maps
from cxr.training.inference import Normalize, predict_logits


@dataclass(frozen=True)
class Explainers:
    """What the saliency methods need: the model, its Grad-CAM layer and LIME's settings."""

    model: nn.Module
    arch: str
    layer: nn.Module
    device: torch.device
    lime_samples: int
    lime_segments: int
    seed: int


# saliency(explainers, uint8 (N, 1, S, S) pixels, target classes) -> (N, S, S) maps
MapFn = Callable[[Explainers, torch.Tensor, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Saliency:
    """One saliency method: its title in figures, how it maps an image, and whether it is the
    no-information reference the others are measured against (not drawn, not a headline)."""

    title: str
    maps: MapFn
    reference: bool = False


def _gradcam(method: str) -> MapFn:
    def saliency(ctx: Explainers, pixels: torch.Tensor, targets: np.ndarray) -> np.ndarray:
        with METHODS[method](ctx.model, ctx.layer) as explainer:
            cams, _ = compute_cams(
                explainer, pixels, torch.as_tensor(targets), ctx.device, ctx.arch
            )
        return cams

    return saliency


def _lime(ctx: Explainers, pixels: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    return lime_maps(
        ctx.model,
        ctx.arch,
        pixels,
        targets,
        ctx.lime_samples,
        ctx.lime_segments,
        ctx.seed,
        ctx.device,
        desc="lime",
    )


def _random(ctx: Explainers, pixels: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(ctx.seed + 7)
    return rng.random((len(pixels), *pixels.shape[-2:])).astype(np.float32)


# gradcam.faithfulness.methods (and cxr-predict's --method, less the reference) -> Saliency
SALIENCY: Registry[Saliency] = Registry("saliency method", "gradcam.faithfulness.methods")
SALIENCY.register("gradcam", Saliency("Grad-CAM", _gradcam("gradcam")))
SALIENCY.register("gradcam++", Saliency("Grad-CAM++", _gradcam("gradcam++")))
SALIENCY.register("lime", Saliency("LIME", _lime))
SALIENCY.register("random", Saliency("random (reference)", _random, reference=True))


def explanations() -> tuple[str, ...]:
    """The methods that explain (every saliency method but the reference)."""
    return tuple(name for name in SALIENCY if not SALIENCY[name].reference)


def pick_images(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to `count` indices spread over the classes (round robin, seeded order within each
    class), sorted: small classes are not crowded out by the largest one."""
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == k))) for k in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop(0)))
    return np.array(sorted(chosen), dtype=np.int64)


def pixel_order(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices, most salient first; ties in random (seeded) order."""
    flat = saliency.reshape(-1)
    return np.lexsort((rng.random(flat.size), -flat))


def perturbation_series(
    image: np.ndarray, order: np.ndarray, steps: int, blur_sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """(steps + 1, H, W) float images in [0, 1] for deletion (top pixels set to 0) and for
    insertion (top pixels of the original over a blurred copy), at 0, 1/steps, ..., 1."""
    original = image.astype(np.float64) / 255.0
    blurred = gaussian_filter(original, blur_sigma, mode="nearest")
    counts = np.rint(np.linspace(0, order.size, steps + 1)).astype(int)
    deletion = np.empty((steps + 1, *image.shape))
    insertion = np.empty((steps + 1, *image.shape))
    for k, n in enumerate(counts):
        removed = np.zeros(order.size, dtype=bool)
        removed[order[:n]] = True
        removed = removed.reshape(image.shape)
        deletion[k] = np.where(removed, 0.0, original)
        insertion[k] = np.where(removed, original, blurred)
    return deletion, insertion


def area(curve: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at equal steps over [0, 1]."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


@torch.no_grad()
def class_probability(
    model: nn.Module, arch: str, images: np.ndarray, target: int, device: torch.device
) -> np.ndarray:
    """p(target) for float (n, H, W) images in [0, 1], through the model's normalisation."""
    inputs = torch.from_numpy(images[:, None].astype(np.float32)).to(device)
    logits = model(Normalize(arch).to(device)(inputs)).float()
    return logits.softmax(1)[:, target].cpu().numpy()


def deletion_insertion(
    model: nn.Module,
    arch: str,
    pixels: torch.Tensor,
    saliency: np.ndarray,
    targets: np.ndarray,
    steps: int,
    seed: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (deletion AUC, insertion AUC) of `saliency` for class `targets`."""
    model.eval()
    rng = np.random.default_rng(seed)
    size = pixels.shape[-1]
    deletions, insertions = [], []
    for i in range(len(pixels)):
        order = pixel_order(saliency[i], rng)
        deleted, inserted = perturbation_series(pixels[i, 0].numpy(), order, steps, size / 20)
        deletions.append(area(class_probability(model, arch, deleted, int(targets[i]), device)))
        insertions.append(area(class_probability(model, arch, inserted, int(targets[i]), device)))
    return np.array(deletions), np.array(insertions)


def report_key(name: str) -> str:
    """A method's name as a report key MLflow accepts as part of a metric name."""
    return name.replace("++", "_plusplus")


def _mean_with_ci(values: np.ndarray, resamples: int, confidence: float, seed: int) -> dict:
    """The mean and its seeded percentile bootstrap interval (over resampled images)."""
    entry: dict[str, float | None] = {"mean": round(float(values.mean()), 6)}
    entry["low"] = entry["high"] = None
    if resamples and len(values):
        draws = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
        tail = (1.0 - confidence) / 2.0
        low, high = np.quantile(values[draws].mean(axis=1), [tail, 1.0 - tail])
        entry["low"], entry["high"] = round(float(low), 6), round(float(high), 6)
    return entry


def faithfulness_report(
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per method: deletion and insertion AUC (mean, bootstrap interval), the lead over the
    random map (paired: random minus method for deletion, method minus random for insertion,
    so higher is better in both), and the ranking by deletion AUC."""
    report: dict[str, Any] = {"methods": {}}
    references = [name for name in scores if SALIENCY[name].reference]
    reference = scores[references[0]] if references else None
    for name, (deletion, insertion) in scores.items():
        entry = {
            "images": len(deletion),
            "deletion_auc": _mean_with_ci(deletion, resamples, confidence, seed),
            "insertion_auc": _mean_with_ci(insertion, resamples, confidence, seed),
        }
        if reference is not None and not SALIENCY[name].reference:
            entry["deletion_lead_over_random"] = _mean_with_ci(
                reference[0] - deletion, resamples, confidence, seed
            )
            entry["insertion_lead_over_random"] = _mean_with_ci(
                insertion - reference[1], resamples, confidence, seed
            )
        report["methods"][report_key(name)] = entry
    methods = report["methods"]
    report["ranking_by_deletion"] = sorted(
        methods, key=lambda name: methods[name]["deletion_auc"]["mean"]
    )
    report["ranking_by_insertion"] = sorted(
        methods, key=lambda name: -methods[name]["insertion_auc"]["mean"]
    )
    return report


def headline(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """For metrics/gradcam.json: each explaining method's mean deletion and insertion AUC."""
    shown = {report_key(name) for name in explanations()}
    return {
        name: {
            "deletion_auc": entry["deletion_auc"]["mean"],
            "insertion_auc": entry["insertion_auc"]["mean"],
        }
        for name, entry in report.get("methods", {}).items()
        if name in shown
    }


def score_methods(
    ctx: Explainers,
    pixels: torch.Tensor,
    methods: tuple[str, ...],
    steps: int,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Each method's maps of the predicted class and its per-image (deletion, insertion) AUCs
    on `pixels`; also the predicted classes."""
    targets = predict_logits(ctx.model, ctx.arch, pixels, 64, ctx.device).argmax(1).numpy()
    maps: dict[str, np.ndarray] = {}
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in methods:
        maps[name] = SALIENCY[name].maps(ctx, pixels, targets)
        scores[name] = deletion_insertion(
            ctx.model, ctx.arch, pixels, maps[name], targets, steps, ctx.seed, ctx.device
        )
    return maps, scores, targets
