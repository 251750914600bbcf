"""Stage `gradcam`: Grad-CAM overlays for test images and localisation scores.

Overlays (the predicted class's map) go to plots/gradcam/<Class>/ with one grid per class;
where masks exist, metrics/gradcam.json scores how much of the true class's map lies inside
them, against the masks' own area share (what an uninformative map would score).
"""

from cxr import layout
from cxr.config import load_params
from cxr.data import load_split
from cxr.errors import run_stage
from cxr.fsio import atomic_dir, write_json
from cxr.gradcam import GradCAM, compute_cams, load_masks, localisation_report
from cxr.models import cam_layer, load_checkpoint
from cxr.plots import gradcam_grid, overlay_figure, save_figure
from cxr.tracking import pipeline_run
from cxr.training import select_device


def main() -> None:
    params = load_params()
    cfg = params.gradcam
    with pipeline_run("gradcam", params) as run:
        device = select_device("auto")
        model, card = load_checkpoint(layout.MODEL, device)
        test = load_split(layout.SPLIT / "test", card.image_size, card.classes)
        with GradCAM(model, cam_layer(model, card.arch, cfg.target_layer)) as explainer:
            shown_cams, probabilities = compute_cams(explainer, test.pixels, None, device)
            true_cams, _ = compute_cams(explainer, test.pixels, test.labels, device)
        labels = test.labels.numpy()
        masks = load_masks(layout.MASKS, list(test.files), card.image_size)
        write_json(
            layout.GRADCAM_METRICS, localisation_report(true_cams, masks, labels, card.classes)
        )

        with atomic_dir(layout.GRADCAM_DIR) as out:
            for k, name in enumerate(card.classes):
                chosen = [i for i in range(len(test)) if labels[i] == k][: cfg.images_per_class]
                panels = []
                for i in chosen:
                    predicted = int(probabilities[i].argmax())
                    panel = {
                        "image": test.pixels[i, 0].numpy(),
                        "cam": shown_cams[i],
                        "mask": masks[i],
                        "title": f"{test.files[i].name[:28]}\ntrue {name} · pred "
                        f"{card.classes[predicted]} ({probabilities[i, predicted]:.2f})",
                    }
                    panels.append(panel)
                    figure = overlay_figure(
                        panel["image"],
                        panel["cam"],
                        panel["title"],
                        cfg.overlay_alpha,
                        panel["mask"],
                    )
                    save_figure(figure, out / name / f"{test.files[i].stem}.png")
                save_figure(gradcam_grid(panels, cfg.overlay_alpha), out / f"{name}_grid.png")
        run.log_metrics_file(layout.GRADCAM_METRICS, "gradcam")
        run.log_artifacts(layout.GRADCAM_DIR, "gradcam")


if __name__ == "__main__":
    run_stage(main)
