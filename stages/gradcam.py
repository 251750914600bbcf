"""Stage `gradcam`: Grad-CAM overlays for test images and localisation scores.

The layer explained is `gradcam.target_layer` (`auto`: the deepest of the architecture's
candidates with a map of at least `gradcam.min_map_size` cells a side at the model's input
size). Figures of the predicted class's map go to plots/gradcam/overlays/<Class>/{correct,wrong}/,
with one grid per class and outcome that has images (plots/gradcam/grids/<Class>_<outcome>.png,
DVC image plots). Where masks exist, reports/gradcam.json scores per class how much of the true
class's map lies inside them, against the masks' own area share (what an uninformative map
would score). LIME, Grad-CAM and Grad-CAM++ are then drawn side by side
(plots/gradcam/methods/) and each method's faithfulness scored by deletion/insertion AUC
(cxr.explanation.faithfulness) on a spread of test images; metrics/gradcam.json holds the
overall localisation and faithfulness scores. The time each part took is printed last.
"""

from cxr.training.kernels import pin_kernels

# Reproducible mode re-executes the stage with pinned CPU kernels: now, before the
# imports below load torch, rather than after them.
pin_kernels()

import time

import numpy as np
import torch

from cxr.core import layout
from cxr.core.config import GradcamConfig, load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_json
from cxr.explanation.faithfulness import SALIENCY, headline
from cxr.explanation.figures import write_gradcam_overlays
from cxr.explanation.gradcam import METHODS, choose_layer, compute_cams
from cxr.explanation.localisation import load_masks, localisation_report
from cxr.explanation.methods import explain_and_score
from cxr.tracking.record import GRADCAM_FOLDER
from cxr.tracking.runs import pipeline_run
from cxr.training.checkpoint import load_checkpoint
from cxr.training.pixels import load_split
from cxr.training.runtime import configure, enter_reproducible_mode, select_device


def print_timings(parts: dict[str, float], total: float) -> None:
    """The seconds each part of the stage took, and the total (stdout, after the results)."""
    listed = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items())
    print(f"gradcam time: {listed}; total {total:.1f} s")


def main() -> None:
    started = time.perf_counter()
    params = load_params(registries=(METHODS, SALIENCY))
    enter_reproducible_mode(params.train)  # the kernels and threads the model was trained with
    cfg = params.gradcam
    parts: dict[str, float] = {}
    with pipeline_run("gradcam", params) as run:
        device = select_device("auto")
        configure(params.train, device)
        model, card = load_checkpoint(layout.MODEL, device)
        test = load_split(layout.SPLIT / "test", card.image_size, card.classes, card.prep)
        parts["loading"] = time.perf_counter() - started
        path, layer = choose_layer(
            model, card.arch, card.image_size, cfg.target_layer, cfg.min_map_size
        )
        labels = test.labels.numpy()
        start = time.perf_counter()
        with METHODS[cfg.method](model, layer) as explainer:
            # shown: the predicted class's map (what a reader sees); scored: the true class's
            shown_cams, probabilities = compute_cams(
                explainer,
                test.pixels,
                None,
                device,
                card.arch,
                desc="gradcam: predicted-class maps",
            )
            # where the prediction is right the true class's map is the one just computed
            predicted = probabilities.argmax(1)
            wrong = np.flatnonzero(predicted != labels)
            true_cams = shown_cams.copy()
            if len(wrong):
                true_cams[wrong], _ = compute_cams(
                    explainer,
                    test.pixels[torch.from_numpy(wrong)],
                    test.labels[torch.from_numpy(wrong)],
                    device,
                    card.arch,
                    desc="gradcam: true-class maps",
                )
        parts[f"Grad-CAM maps ({len(labels)} images)"] = time.perf_counter() - start
        masks = load_masks(layout.MASKS, list(test.files), card.image_size)
        report = localisation_report(true_cams, masks, labels, card.classes)
        report["layer"], report["method"] = path, cfg.method
        start = time.perf_counter()
        drawn = write_gradcam_overlays(
            layout.GRADCAM_DIR,
            list(test.files),
            labels,
            shown_cams,
            probabilities,
            masks,
            card.classes,
            cfg.images_per_class,
            cfg.overlay_alpha,
            desc="gradcam: overlays",
        )
        parts["overlays"] = time.perf_counter() - start
        # LIME beside Grad-CAM(++) and the faithfulness of each (after the overlays, which
        # replace the whole folder); the maps of `cfg.method` are those computed above
        timings: dict[str, float] = {}
        report["faithfulness"] = explain_and_score(
            model,
            card.arch,
            layer,
            test,
            cfg,
            device,
            layout.GRADCAM_METHODS,
            predicted=predicted,
            known={cfg.method: shown_cams},
            timings=timings,
        )
        scored = len(report["faithfulness"].get("files", ()))
        parts.update(faithfulness_parts(cfg, timings, scored))
        write_json(layout.GRADCAM_REPORT, report)
        metrics = {**report["overall"], "faithfulness": headline(report["faithfulness"])}
        write_json(layout.GRADCAM_METRICS, metrics)
        start = time.perf_counter()
        run.log_artifacts(layout.GRADCAM_DIR, GRADCAM_FOLDER)
        parts["logging"] = time.perf_counter() - start
        print(f"gradcam ({cfg.method}, {path}): {sum(drawn.values())} images in {len(drawn)} grids")
        overall = report["overall"]
        if overall:
            print(
                f"gradcam: energy in mask {overall['energy_in_mask']:.3f} vs mask area "
                f"{overall['mask_area']:.3f}, pointing {overall['pointing_hit_rate']:.2f} "
                f"on {overall['images']} images"
            )
    print_timings(parts, time.perf_counter() - started)


def faithfulness_parts(
    cfg: GradcamConfig, timings: dict[str, float], images: int
) -> dict[str, float]:
    """`explain_and_score`'s timings under the names the stage prints: LIME (with its sample
    count), the other methods' maps, the deletion/insertion curves and the method figures."""
    fcfg = cfg.faithfulness
    parts = {}
    if "lime" in timings:
        label = f"LIME ({images} images x {cfg.lime.num_samples} samples)"
        parts[label] = timings.pop("lime")
    others = [name for name in fcfg.methods if name in timings]
    if others:
        parts[f"{'/'.join(others)} maps"] = sum(timings.pop(name) for name in others)
    if "faithfulness" in timings:
        label = (
            f"faithfulness ({images} images x {len(fcfg.methods)} methods x 2 curves x "
            f"{fcfg.steps + 1} steps)"
        )
        parts[label] = timings.pop("faithfulness")
    parts.update(timings)
    return parts


if __name__ == "__main__":
    run_stage(main)
