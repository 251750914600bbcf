"""How faithful an explanation is to the model: deletion and insertion AUC (Petsiuk et al.,
RISE, BMVC 2018), for the saliency methods of `SALIENCY` (Grad-CAM, Grad-CAM++, LIME) and a
random map as the reference (`gradcam.faithfulness.methods` names them).

Pixels are ranked by a method's saliency for the predicted class (ties broken at random,
seeded: LIME's superpixels tie whole regions, and a scan-order tie-break would remove the top
rows first). Deletion sets the top 0, 1/steps, ..., all of the pixels to black (0) and follows
the class probability: a map that found what the model uses makes it fall fast (low AUC).
Insertion starts from a blurred copy and puts the top pixels back: the probability should
rise fast (high AUC). AUC is the trapezoid area over the fraction of pixels, in [0, 1]. All
methods' steps of an image (and of as many images as fill a batch) go through the model
together, from one blurred copy per image (`curves`, cxr.explanation.scoring). Each
method's mean over the scored test images comes with a seeded percentile bootstrap interval,
and its lead over the random map with a paired one (same resampled images).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from cxr.core.progress import Stopwatch, progress
from cxr.core.registry import Registry
from cxr.explanation.gradcam import METHODS, compute_cams
from cxr.explanation.lime_explain import lime_maps
from cxr.explanation.scoring import Scorer, batch_size_for


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
        desc="gradcam: LIME",
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


def blurred_copy(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 (H, W) image as float64 in [0, 1] and its Gaussian-blurred copy (insertion's
    starting point)."""
    original = image.astype(np.float64) / 255.0
    return original, gaussian_filter(original, sigma, mode="nearest")


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels removed (or inserted) at each of the steps + 1 points 0, 1/steps, ..., 1."""
    return np.rint(np.linspace(0, pixels, steps + 1)).astype(int)


def _series(
    original: np.ndarray, blurred: np.ndarray, order: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion series (steps + 1, H, W) in the dtype of `original`."""
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    # removed[k]: the top counts[k] pixels of `order`
    removed = rank.reshape(1, *original.shape) < step_counts(order.size, steps)[:, None, None]
    zero = np.zeros((), dtype=original.dtype)
    return np.where(removed, zero, original), np.where(removed, original, blurred)


def perturbation_series(
    image: np.ndarray, order: np.ndarray, steps: int, blur_sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """(steps + 1, H, W) float images in [0, 1] for deletion (top pixels set to 0) and for
    insertion (top pixels of the original over a blurred copy), at 0, 1/steps, ..., 1."""
    return _series(*blurred_copy(image, blur_sigma), order, steps)


def area(curve: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at equal steps over [0, 1]."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def curves(
    model: nn.Module,
    arch: str,
    pixels: torch.Tensor,
    saliency: dict[str, np.ndarray],
    targets: np.ndarray,
    steps: int,
    seed: int,
    device: torch.device,
    batch_size: int | None = None,
    desc: str = "",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method of `saliency` (name → (N, H, W) maps): the (N, steps + 1) deletion and
    insertion curves of p(`targets`) on uint8 (N, 1, H, W) `pixels`.

    Each image is scored once for what every method shares (the image itself: deletion's
    start and insertion's end; black: deletion's end; the blurred copy: insertion's start),
    then each method's steps in between; all of an image's (and of as many images as one
    batch needs) go through the model in the same forward passes. Each method's ties are
    broken by its own generator seeded `seed`, drawn image after image: an image's curves do
    not depend on the other methods scored with it.
    """
    model.eval()
    scorer = Scorer(model, arch, device, batch_size)
    names = list(saliency)
    rngs = {name: np.random.default_rng(seed) for name in names}
    size = pixels.shape[-1]
    inner = steps - 1  # steps strictly between the shared ends
    per_image = 3 + len(names) * 2 * inner
    chunk = scorer.batch_size or batch_size_for(device, pixels.shape[-2] * size)
    group = max(1, -(-chunk // per_image))
    found = {name: np.zeros((len(pixels), 2, steps + 1), np.float32) for name in names}
    starts: Iterable[int] = range(0, len(pixels), group)
    if desc:
        unit = "images" if group == 1 else f"groups of {group} images"
        starts = progress(starts, desc, total=-(-len(pixels) // group), unit=unit)
    for start in starts:
        rows = range(start, min(start + group, len(pixels)))
        series = []
        for i in rows:
            # float32 casts of the float64 images: the inputs the model always received
            original, blurred = (
                a.astype(np.float32) for a in blurred_copy(pixels[i, 0].numpy(), size / 20)
            )
            series.append(np.stack([original, np.zeros_like(original), blurred]))
            for name in names:
                order = pixel_order(saliency[name][i], rngs[name])
                deletion, insertion = _series(original, blurred, order, steps)
                series += [deletion[1:steps], insertion[1:steps]]
        probabilities = scorer(np.concatenate(series)).reshape(len(rows), per_image, -1)
        for k, i in enumerate(rows):
            p = probabilities[k, :, int(targets[i])]
            shared, own = p[:3], p[3:].reshape(len(names), 2, inner)
            for m, name in enumerate(names):
                curve = found[name][i]
                curve[0, 0], curve[0, steps] = shared[0], shared[1]  # image ... black
                curve[1, 0], curve[1, steps] = shared[2], shared[0]  # blurred ... image
                curve[:, 1:steps] = own[m]
    return {name: (value[:, 0], value[:, 1]) for name, value in found.items()}


def deletion_insertion(
    model: nn.Module,
    arch: str,
    pixels: torch.Tensor,
    saliency: np.ndarray,
    targets: np.ndarray,
    steps: int,
    seed: int,
    device: torch.device,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (deletion AUC, insertion AUC) of `saliency` for class `targets`."""
    found = curves(model, arch, pixels, {"map": saliency}, targets, steps, seed, device, batch_size)
    deletion, insertion = found["map"]
    return aucs(deletion), aucs(insertion)


def aucs(values: np.ndarray) -> np.ndarray:
    """Trapezoid areas of (N, steps + 1) curves (see `area`)."""
    return np.array([area(curve) for curve in values])


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
    targets: np.ndarray | None = None,
    known: dict[str, np.ndarray] | None = None,
    watch: Stopwatch | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Each method's maps of the predicted class and its per-image (deletion, insertion) AUCs
    on `pixels`; also the predicted classes. `targets`: the predicted classes where already
    known, `known`: maps of them already computed (method name → (N, H, W)), not computed
    again. `watch` (if given) times each method's maps it computes under the method's name and
    the curves under `faithfulness`."""
    watch = watch or Stopwatch()
    if targets is None:
        targets = Scorer(ctx.model, ctx.arch, ctx.device)(pixels).argmax(1)
    known = known or {}
    maps: dict[str, np.ndarray] = {}
    for name in methods:
        if name in known:
            maps[name] = known[name]
            continue
        with watch.part(name):
            maps[name] = SALIENCY[name].maps(ctx, pixels, targets)
    with watch.part("faithfulness"):
        found = curves(
            ctx.model,
            ctx.arch,
            pixels,
            maps,
            targets,
            steps,
            ctx.seed,
            ctx.device,
            desc="gradcam: faithfulness",
        )
    scores = {
        name: (aucs(deletion), aucs(insertion)) for name, (deletion, insertion) in found.items()
    }
    return maps, scores, targets
