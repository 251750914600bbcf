"""Stage `gradcam`: Grad-CAM overlays for test images and localisation scores.

The layer explained is `gradcam.target_layer` (`auto`: the deepest of the architecture's
candidates with a map of at least `gradcam.min_map_size` cells a side at the model's input
size). Overlays of the predicted class's map go to plots/gradcam/<Class>/{correct,wrong}/,
with one grid per class and outcome (<Class>_correct.png, <Class>_wrong.png). Where masks
exist, metrics/gradcam.json scores how much of the true class's map lies inside them, against
the masks' own area share (what an uninformative map would score).
"""

import numpy as np

from cxr import layout
from cxr.config import GradcamConfig, load_params
from cxr.data import PixelSet, load_split
from cxr.errors import run_stage
from cxr.fsio import atomic_dir, write_json
from cxr.gradcam import GradCAM, choose_layer, compute_cams, load_masks, localisation_report
from cxr.models import load_checkpoint
from cxr.plots import gradcam_grid, overlay_figure, save_figure
from cxr.tracking import pipeline_run
from cxr.training import select_device

OUTCOMES = ("correct", "wrong")


def panel(
    test: PixelSet,
    i: int,
    cams: np.ndarray,
    probabilities: np.ndarray,
    masks: list[np.ndarray | None],
    classes: tuple[str, ...],
) -> dict:
    """One grid panel: the image, its heat map, mask and a true-vs-predicted title."""
    true, predicted = classes[int(test.labels[i])], int(probabilities[i].argmax())
    return {
        "image": test.pixels[i, 0].numpy(),
        "cam": cams[i],
        "mask": masks[i],
        "title": f"{test.files[i].name[:28]}\ntrue {true} · pred "
        f"{classes[predicted]} (p={probabilities[i, predicted]:.2f})",
    }


def write_overlays(
    test: PixelSet,
    cams: np.ndarray,
    probabilities: np.ndarray,
    masks: list[np.ndarray | None],
    classes: tuple[str, ...],
    cfg: GradcamConfig,
) -> None:
    """Per class and outcome: up to images_per_class overlays and their grid."""
    labels = test.labels.numpy()
    correct = probabilities.argmax(1) == labels
    with atomic_dir(layout.GRADCAM_DIR) as out:
        for k, name in enumerate(classes):
            for outcome, wanted in zip(OUTCOMES, (True, False), strict=True):
                chosen = np.flatnonzero((labels == k) & (correct == wanted))
                panels = []
                for i in chosen[: cfg.images_per_class]:
                    panels.append(panel(test, i, cams, probabilities, masks, classes))
                    figure = overlay_figure(
                        panels[-1]["image"],
                        panels[-1]["cam"],
                        panels[-1]["title"],
                        cfg.overlay_alpha,
                        panels[-1]["mask"],
                    )
                    save_figure(figure, out / name / outcome / f"{test.files[i].stem}.png")
                title = (
                    f"{name}: {outcome}ly classified ({len(chosen)} of {int((labels == k).sum())})"
                )
                save_figure(
                    gradcam_grid(panels, cfg.overlay_alpha, title), out / f"{name}_{outcome}.png"
                )


def main() -> None:
    params = load_params()
    cfg = params.gradcam
    with pipeline_run("gradcam", params) as run:
        device = select_device("auto")
        model, card = load_checkpoint(layout.MODEL, device)
        test = load_split(layout.SPLIT / "test", card.image_size, card.classes)
        path, layer = choose_layer(
            model, card.arch, card.image_size, cfg.target_layer, cfg.min_map_size
        )
        with GradCAM(model, layer, cfg.method) as explainer:
            shown_cams, probabilities = compute_cams(explainer, test.pixels, None, device)
            true_cams, _ = compute_cams(explainer, test.pixels, test.labels, device)
        labels = test.labels.numpy()
        masks = load_masks(layout.MASKS, list(test.files), card.image_size)
        report = localisation_report(true_cams, masks, labels, card.classes)
        report["layer"] = path
        report["method"] = cfg.method
        write_json(layout.GRADCAM_METRICS, report)
        write_overlays(test, shown_cams, probabilities, masks, card.classes, cfg)
        run.log_metrics_file(layout.GRADCAM_METRICS, "gradcam")
        run.log_artifacts(layout.GRADCAM_DIR, "gradcam")
        overall = report["overall"]
        if overall:
            print(
                f"gradcam ({cfg.method}, {path}): energy in mask "
                f"{overall['energy_in_mask']:.3f} vs mask area {overall['mask_area']:.3f}, "
                f"pointing {overall['pointing_hit_rate']:.2f} on {overall['images']} images"
            )


if __name__ == "__main__":
    run_stage(main)
