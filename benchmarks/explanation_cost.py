"""What the gradcam stage's parts cost at the real recipe's size, and how faithful LIME stays
with fewer samples: the measurement behind `gradcam.lime.num_samples`,
`gradcam.faithfulness.images` and `gradcam.faithfulness.steps` in params.yaml.

    python benchmarks/explanation_cost.py --data ../shared/data/cxr3
    python benchmarks/explanation_cost.py --data ../shared/data/cxr3 --images 16 --threads 1

The model is the recipe's architecture with its ImageNet weights and a linear head fitted to
a few images per class (disjoint from the explained ones), so that its probabilities depend
on the image the way a trained model's do. Per image and setting it times LIME's maps and the
deletion/insertion curves, and gives LIME's mean deletion and insertion AUC for two LIME
seeds: the spread between the seeds at the largest sample count is the noise a setting is
measured against. The stage's implementation before batching (lime's own sample loop, the
default memory layout, 64 copies per forward pass, one curve per call) is timed on a few of
the images as the reference of the ratios. Timings are wall-clock seconds on this machine with
`--threads` threads: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cxr.core.config import FaithfulnessConfig, GradcamConfig, LimeConfig
from cxr.explanation import gradcam as gradcam_module
from cxr.explanation.faithfulness import (
    area,
    aucs,
    curves,
    perturbation_series,
    pick_images,
    pixel_order,
)
from cxr.explanation.figures import write_gradcam_overlays
from cxr.explanation.gradcam import METHODS, choose_layer, compute_cams
from cxr.explanation.lime_explain import lime_map, lime_maps
from cxr.explanation.methods import write_method_grids
from cxr.explanation.scoring import Scorer, batch_size_for
from cxr.training.inference import Normalize
from cxr.training.models import build_model, resolve_weights
from cxr.training.pixels import load_pixels

ARCH = "efficientnet_lite0"  # the real-data recipe's model (benchmarks/real_recipes.py)
SIZE = 224  # and its input size
# The stage before batching (git history of cxr.explanation): copies per call of the LIME
# classifier (one forward pass each call), Grad-CAM batch, and the defaults it ran with.
LEGACY_LIME_BATCH = 64
LEGACY_CAM_BATCH = 32
LEGACY_SAMPLES, LEGACY_IMAGES, LEGACY_STEPS = 300, 24, 16


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def class_files(data: Path) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """Every image of a Kaggle-layout folder (`<Class>/images/*.png`), with labels."""
    classes = tuple(sorted(p.name for p in data.iterdir() if (p / "images").is_dir()))
    files, labels = [], []
    for k, name in enumerate(classes):
        found = sorted((data / name / "images").glob("*.png"))
        files += found
        labels += [k] * len(found)
    return classes, files, np.array(labels)


def fit_head(
    model: torch.nn.Module, pixels: torch.Tensor, labels: np.ndarray, device: torch.device
) -> float:
    """Fit the model's linear classifier to the pooled features of `pixels` (logistic
    regression); returns the accuracy on them."""
    from sklearn.linear_model import LogisticRegression

    head = model.classifier
    model.classifier = torch.nn.Identity()  # the pooled features
    try:
        normalize = Normalize(ARCH).to(device)
        with torch.inference_mode():
            chunks = pixels.split(batch_size_for(device, pixels.shape[-2] * pixels.shape[-1]))
            feats = torch.cat([model(normalize(c.to(device))).float().cpu() for c in chunks])
            feats = feats.numpy()
    finally:
        model.classifier = head
    fitted = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit(feats, labels)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fitted.coef_).float())
        head.bias.copy_(torch.from_numpy(fitted.intercept_).float())
    return float(fitted.score(feats, labels))


def legacy_classifier(model: torch.nn.Module, device: torch.device) -> Callable:
    """The LIME classifier before batching: each call of lime (64 copies) in one forward pass
    in the default memory layout."""
    normalize = Normalize(ARCH).to(device)

    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        gray = np.ascontiguousarray(images[..., 0], dtype=np.uint8)[:, None]
        return model(normalize(torch.from_numpy(gray).to(device))).float().softmax(1).numpy()

    return predict


@torch.no_grad()
def legacy_curves_auc(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    saliency: np.ndarray,
    targets: np.ndarray,
    steps: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion/insertion AUC before batching: one forward pass per curve (steps + 1 images),
    the blurred copy made again for every method."""
    normalize = Normalize(ARCH)
    rng = np.random.default_rng(seed)
    deletions, insertions = [], []
    for i in range(len(pixels)):
        order = pixel_order(saliency[i], rng)
        series = perturbation_series(pixels[i, 0].numpy(), order, steps, pixels.shape[-1] / 20)
        for found, images in zip((deletions, insertions), series, strict=True):
            inputs = normalize(torch.from_numpy(images[:, None].astype(np.float32)))
            found.append(area(model(inputs).float().softmax(1)[:, targets[i]].numpy()))
    return np.array(deletions), np.array(insertions)


def legacy_stage(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    pixels: torch.Tensor,
    targets: np.ndarray,
    labels: np.ndarray,
    cfg: GradcamConfig,
) -> dict[str, float]:
    """Seconds per image of each part as the stage ran them before batching, with the
    defaults of then (`LEGACY_*`)."""
    cpu = torch.device("cpu")
    n = len(pixels)
    seconds: dict[str, float] = {}
    layout = gradcam_module.fast_layout
    gradcam_module.fast_layout = lambda inputs: inputs  # the default layout, as before
    try:
        with METHODS["gradcam"](model, layer) as explainer:
            batch = LEGACY_CAM_BATCH
            _, t_shown = timed(lambda: compute_cams(explainer, pixels, None, cpu, ARCH, batch))
            true = torch.from_numpy(labels)
            _, t_true = timed(lambda: compute_cams(explainer, pixels, true, cpu, ARCH, batch))
        seconds["Grad-CAM maps (predicted + true class)"] = (t_shown + t_true) / n
        maps = {}
        for name in ("gradcam", "gradcam++"):
            with METHODS[name](model, layer) as explainer:
                got, t = timed(
                    lambda e=explainer: compute_cams(
                        e, pixels, torch.from_numpy(targets), cpu, ARCH, LEGACY_CAM_BATCH
                    )
                )
            maps[name] = got[0]
            seconds[f"{name} maps (faithfulness)"] = t / n
    finally:
        gradcam_module.fast_layout = layout
    from lime.lime_image import LimeImageExplainer

    predict = legacy_classifier(model, cpu)
    lcfg, fcfg = cfg.lime, cfg.faithfulness

    def lime_all() -> np.ndarray:
        with contextlib.redirect_stderr(io.StringIO()):  # lime's own progress bar
            return np.stack(
                [
                    lime_map(
                        predict,
                        pixels[i, 0].numpy(),
                        int(targets[i]),
                        LEGACY_SAMPLES,
                        lcfg.segments,
                        fcfg.seed * 100_003 + i,
                        LEGACY_LIME_BATCH,
                        LimeImageExplainer,
                    )
                    for i in range(n)
                ]
            )

    maps["lime"], t = timed(lime_all)
    seconds["LIME"] = t / n
    maps["random"] = np.random.default_rng(0).random(maps["lime"].shape).astype(np.float32)
    start = time.perf_counter()
    for name in fcfg.methods:
        legacy_curves_auc(model, pixels, maps[name], targets, LEGACY_STEPS, fcfg.seed)
    seconds["faithfulness"] = (time.perf_counter() - start) / n
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cxr3"))
    parser.add_argument("--size", type=int, default=SIZE, help="input size (px)")
    parser.add_argument("--images", type=int, default=12, help="images explained and scored")
    parser.add_argument("--samples", type=int, nargs="+", default=[50, 100, 150, 300])
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 1], help="two LIME seeds")
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 8])
    parser.add_argument(
        "--legacy-images", type=int, default=2, help="images timed the pre-batching way"
    )
    parser.add_argument("--head-images", type=int, default=16, help="per class, to fit the head")
    parser.add_argument("--test-images", type=int, default=190, help="test split to project to")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as the stage runs on a CPU
    cpu = torch.device("cpu")
    defaults = GradcamConfig()
    lcfg, fcfg = LimeConfig(), FaithfulnessConfig()
    classes, files, labels = class_files(args.data)
    rng = np.random.default_rng(0)
    head_rows = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == k))[: args.head_images]
            for k in range(len(classes))
        ]
    )
    rest = np.setdiff1d(np.arange(len(files)), head_rows)
    explained = rest[pick_images(labels[rest], args.images, 0)]
    head_pixels = load_pixels(tuple(files[i] for i in head_rows), args.size)
    pixels = load_pixels(tuple(files[i] for i in explained), args.size)
    truth = labels[explained]

    model = build_model(ARCH, len(classes), resolve_weights(ARCH, "DEFAULT")).eval()
    fit = fit_head(model, head_pixels, labels[head_rows], cpu)
    probabilities = Scorer(model, ARCH, cpu)(pixels)
    targets = probabilities.argmax(1)
    path, layer = choose_layer(model, ARCH, args.size, "auto", defaults.min_map_size)
    n = len(pixels)
    print(
        f"{ARCH} at {args.size} px, {args.threads} thread(s), model batch "
        f"{batch_size_for(cpu, args.size * args.size)}; head fitted on {len(head_rows)} "
        f"images (accuracy "
        f"{fit:.2f}), {n} images explained (accuracy {(targets == truth).mean():.2f}, "
        f"classes {np.bincount(truth, minlength=len(classes)).tolist()}); Grad-CAM layer {path}"
    )

    # --- the stage's parts, batched, per image
    seconds: dict[str, float] = {}
    with METHODS[defaults.method](model, layer) as explainer:
        (cams, probs), t = timed(lambda: compute_cams(explainer, pixels, None, cpu, ARCH))
        wrong = np.flatnonzero(probs.argmax(1) != truth)
        if len(wrong):
            rows = torch.from_numpy(wrong)
            _, t_wrong = timed(
                lambda: compute_cams(
                    explainer, pixels[rows], torch.from_numpy(truth[wrong]), cpu, ARCH
                )
            )
            t += t_wrong
    seconds["Grad-CAM maps (predicted + true class)"] = t / n
    maps = {defaults.method: cams}
    with METHODS["gradcam++"](model, layer) as explainer:
        got, t = timed(
            lambda: compute_cams(explainer, pixels, torch.from_numpy(targets), cpu, ARCH)
        )
    maps["gradcam++"] = got[0]
    seconds["gradcam++ maps (faithfulness)"] = t / n
    with tempfile.TemporaryDirectory(prefix="cxr-explanation-cost-") as scratch:
        _, t = timed(
            lambda: write_gradcam_overlays(
                Path(scratch) / "gradcam",
                [files[i] for i in explained],
                truth,
                cams,
                probs,
                [None] * n,
                classes,
                defaults.images_per_class,
                defaults.overlay_alpha,
            )
        )
        seconds["overlays (all figures, once)"] = t

    lime: dict[tuple[int, int], np.ndarray] = {}
    lime_seconds: dict[int, float] = {}
    for samples in args.samples:
        for seed in args.seeds:
            lime[samples, seed], t = timed(
                lambda s=samples, seed=seed: lime_maps(
                    model, ARCH, pixels, targets, s, lcfg.segments, seed, cpu
                )
            )
            lime_seconds[samples] = lime_seconds.get(samples, 0.0) + t / n / len(args.seeds)
    maps["lime"] = lime[max(args.samples), args.seeds[0]]
    maps["random"] = np.random.default_rng(fcfg.seed + 7).random(cams.shape).astype(np.float32)
    curve_seconds: dict[int, float] = {}
    method_auc: dict[int, dict[str, tuple[float, float]]] = {}
    scored = {m: maps[m] for m in fcfg.methods}
    for steps in args.steps:
        found, t = timed(
            lambda s=steps: curves(model, ARCH, pixels, scored, targets, s, fcfg.seed, cpu)
        )
        curve_seconds[steps] = t / n
        method_auc[steps] = {m: (aucs(d).mean(), aucs(i).mean()) for m, (d, i) in found.items()}
    with tempfile.TemporaryDirectory(prefix="cxr-explanation-cost-") as scratch:
        shown = {m: maps[m] for m in ("gradcam", "gradcam++", "lime")}
        _, t = timed(
            lambda: write_method_grids(
                Path(scratch),
                [files[i] for i in explained],
                pixels[:, 0].numpy(),
                truth,
                targets,
                shown,
                classes,
                lcfg.images_per_class,
            )
        )
        seconds["method figures (all, once)"] = t

    # --- LIME's faithfulness by sample count and seed (the tie-break seed fixed, as the stage)
    auc: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for steps in args.steps:
        found = curves(model, ARCH, pixels, dict(lime), targets, steps, fcfg.seed, cpu)
        for (samples, seed), (deletion, insertion) in found.items():
            auc[samples, seed, steps] = (aucs(deletion), aucs(insertion))

    # --- the reference: the stage before batching, at its defaults
    legacy_n = min(args.legacy_images, n)
    legacy = legacy_stage(
        model, layer, pixels[:legacy_n], targets[:legacy_n], truth[:legacy_n], defaults
    )
    Report(args, n, seconds, lime_seconds, curve_seconds, auc, legacy).print(lcfg, fcfg)
    print(
        f"\nevery method ({max(args.samples)} LIME samples), mean AUC deletion/insertion by steps:"
    )
    for steps, found in method_auc.items():
        listed = ", ".join(f"{m} {d:.4f}/{i:.4f}" for m, (d, i) in found.items())
        print(f"  {steps} steps: {listed}")


class Report:
    """The printed tables (see the module docstring)."""

    def __init__(self, args, n, seconds, lime_seconds, curve_seconds, auc, legacy) -> None:
        self.args, self.n, self.seconds, self.legacy = args, n, seconds, legacy
        self.lime_seconds, self.curve_seconds, self.auc = lime_seconds, curve_seconds, auc

    def means(self, samples: int, steps: int) -> np.ndarray:
        """LIME's mean (deletion, insertion) AUC per seed: (seeds, 2)."""
        return np.array(
            [[self.auc[samples, s, steps][j].mean() for j in (0, 1)] for s in self.args.seeds]
        )

    def stage_seconds(self, per: dict[str, float], lime: float, curves_s: float, images: int):
        """The stage's maps and scores for `--test-images` test images, `images` scored."""
        maps = per["Grad-CAM maps (predicted + true class)"] * self.args.test_images
        scored = lime + curves_s + per["gradcam++ maps (faithfulness)"]
        scored += per.get("gradcam maps (faithfulness)", 0.0)  # before: computed again
        return maps + images * scored

    def print(self, lcfg: LimeConfig, fcfg: FaithfulnessConfig) -> None:
        args, n = self.args, self.n
        steps0, top = (
            LEGACY_STEPS if LEGACY_STEPS in args.steps else args.steps[0],
            max(args.samples),
        )
        a, b = args.seeds
        noise = np.abs(np.diff(self.means(top, steps0), axis=0))[0]
        reference = self.means(top, steps0).mean(0)
        differences = np.array(
            [self.auc[top, a, steps0][j] - self.auc[top, b, steps0][j] for j in (0, 1)]
        )
        error = differences.std(axis=1, ddof=1) / np.sqrt(n)
        print(
            f"\nnoise: LIME at {top} samples, seed {a} vs {b}: mean deletion AUC differs by "
            f"{noise[0]:.4f}, insertion by {noise[1]:.4f} (standard error of that difference "
            f"over {n} images: {error[0]:.4f}, {error[1]:.4f})"
        )
        before = self.legacy["LIME"]
        print(
            f"\nLIME ({steps0} steps) | s/image | x before ({LEGACY_SAMPLES} samples, unbatched) "
            f"| deletion AUC seed {a}, {b} | insertion AUC seed {a}, {b} | "
            f"|mean - {top}'s| del, ins | within seed spread | within its standard error"
        )
        for samples in args.samples:
            m = self.means(samples, steps0)
            gap = np.abs(m.mean(0) - reference)
            mark = " (params.yaml)" if samples == lcfg.num_samples else ""
            print(
                f"{samples:>4} samples{mark} | {self.lime_seconds[samples]:6.2f} | "
                f"{self.lime_seconds[samples] / before:5.3f} | {m[0, 0]:.4f} {m[1, 0]:.4f} | "
                f"{m[0, 1]:.4f} {m[1, 1]:.4f} | {gap[0]:.4f} {gap[1]:.4f} | "
                f"{'yes' if (gap <= noise).all() else 'no'} | "
                f"{'yes' if (gap <= error).all() else 'no'}"
            )
        print(
            f"\nsteps (LIME {top} samples, seed {a}) | curves s/image ({len(fcfg.methods)} "
            f"methods) | x before | LIME deletion AUC | insertion AUC"
        )
        for steps in args.steps:
            d, i = self.auc[top, a, steps]
            seconds = self.curve_seconds[steps]
            ratio = seconds / self.legacy["faithfulness"]
            print(f"{steps:>3} | {seconds:6.2f} | {ratio:5.3f} | {d.mean():.4f} | {i.mean():.4f}")
        spread = self.auc[top, a, steps0][0].std(ddof=1)
        print(
            f"\nimages: LIME deletion AUC varies by {spread:.3f} (sd) between images; 95% "
            "interval of the mean ±"
            + ", ".join(f"{1.96 * spread / np.sqrt(k):.3f} at {k}" for k in (12, 24, 48))
            + " images"
        )
        print(f"\nbefore (unbatched, {args.legacy_images} images), s/image:")
        for name, value in self.legacy.items():
            print(f"  {name}: {value:.2f}")
        print(f"now ({n} images), s/image (figures: s in all):")
        for name, value in self.seconds.items():
            print(f"  {name}: {value:.2f}")
        total = self.stage_seconds(self.legacy, before, self.legacy["faithfulness"], LEGACY_IMAGES)
        print(
            f"\nprojected stage for {args.test_images} test images (Grad-CAM maps, LIME, other "
            f"maps, curves; loading and figures aside): before, {LEGACY_SAMPLES} samples, "
            f"{LEGACY_STEPS} steps, {LEGACY_IMAGES} images: {total / 60:.1f} min"
        )
        for samples in args.samples:
            for steps in args.steps:
                for images in sorted({12, LEGACY_IMAGES, fcfg.images}):
                    now = self.stage_seconds(
                        self.seconds, self.lime_seconds[samples], self.curve_seconds[steps], images
                    )
                    mark = (
                        " (params.yaml)"
                        if (samples, steps, images) == (lcfg.num_samples, fcfg.steps, fcfg.images)
                        else ""
                    )
                    print(
                        f"  {samples} samples, {steps} steps, {images} images: "
                        f"{now / 60:.1f} min, x{now / total:.3f}{mark}"
                    )


if __name__ == "__main__":
    main()
