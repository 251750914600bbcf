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

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_json
from cxr.core.progress import Stopwatch
from cxr.explanation.faithfulness import SALIENCY, headline
from cxr.explanation.figures import write_gradcam_overlays
from cxr.explanation.gradcam import METHODS, choose_layer, class_maps
from cxr.explanation.localisation import load_masks, localisation_report
from cxr.explanation.methods import explain_and_score
from cxr.tracking.record import GRADCAM_FOLDER
from cxr.tracking.runs import pipeline_run
from cxr.training.checkpoint import load_checkpoint
from cxr.training.pixels import load_split
from cxr.training.runtime import configure, enter_reproducible_mode, select_device


def main() -> None:
    watch = Stopwatch()
    params = load_params(registries=(METHODS, SALIENCY))
    enter_reproducible_mode(params.train)  # the kernels and threads the model was trained with
    cfg = params.gradcam
    with pipeline_run("gradcam", params) as run:
        with watch.part("loading"):
            device = select_device("auto")
            configure(params.train, device)
            model, card = load_checkpoint(layout.MODEL, device)
            test = load_split(layout.SPLIT / "test", card.image_size, card.classes, card.prep)
        path, layer = choose_layer(
            model, card.arch, card.image_size, cfg.target_layer, cfg.min_map_size
        )
        labels = test.labels.numpy()
        cams = f"Grad-CAM maps ({len(labels)} images)"
        with watch.part(cams), METHODS[cfg.method](model, layer) as explainer:
            shown_cams, true_cams, probabilities = class_maps(
                explainer, test.pixels, test.labels, device, card.arch
            )
        masks = load_masks(layout.MASKS, list(test.files), card.image_size)
        report = localisation_report(true_cams, masks, labels, card.classes)
        report["layer"], report["method"] = path, cfg.method
        with watch.part("overlays"):
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
        # LIME beside Grad-CAM(++) and the faithfulness of each (after the overlays, which
        # replace the whole folder); the maps of `cfg.method` are those computed above
        report["faithfulness"] = explain_and_score(
            model,
            card.arch,
            layer,
            test,
            cfg,
            device,
            layout.GRADCAM_METHODS,
            predicted=probabilities.argmax(1),
            known={cfg.method: shown_cams},
            watch=watch,
        )
        write_json(layout.GRADCAM_REPORT, report)
        metrics = {**report["overall"], "faithfulness": headline(report["faithfulness"])}
        write_json(layout.GRADCAM_METRICS, metrics)
        with watch.part("logging"):
            run.log_artifacts(layout.GRADCAM_DIR, GRADCAM_FOLDER)
        print(f"gradcam ({cfg.method}, {path}): {sum(drawn.values())} images in {len(drawn)} grids")
        overall = report["overall"]
        if overall:
            print(
                f"gradcam: energy in mask {overall['energy_in_mask']:.3f} vs mask area "
                f"{overall['mask_area']:.3f}, pointing {overall['pointing_hit_rate']:.2f} "
                f"on {overall['images']} images"
            )
    print(watch.line("gradcam time"))


if __name__ == "__main__":
    run_stage(main)
