"""Grad-CAM (and LIME) figures: an image beside its heat-map overlay, grids of them, written as
PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from cxr.core.fsio import atomic_dir, save_figure
from cxr.core.progress import progress

# Grad-CAM display: a perceptually uniform colour map whose opacity follows the map, so
# low-evidence regions show the X-ray itself instead of a tint (jet at a fixed alpha tinted
# every pixel blue); maps are drawn with bilinear upsampling, never as blocky cells.
CAM_CMAP = "inferno"


MASK_COLOR = "#00e5ff"


MASK_LABEL = "mask outline (lesion or lung, from data/masks)"


# The display size of images beside their maps: the model's input (64 px by default) is
# too small to read; the map, at the model's input size, is upsampled to it.
DISPLAY_SIZE = 320


def display_image(path: Path, size: int = DISPLAY_SIZE) -> np.ndarray:
    """An image as the model saw it (square, the same resize), at a readable size."""
    from cxr.data.images import read_gray8
    from cxr.training.pixels import preprocess

    return preprocess(read_gray8(path), size)


def _draw_cam(
    axis, image: np.ndarray, cam: np.ndarray, alpha: float, mask: np.ndarray | None
) -> None:
    """`image` with `cam` (values in [0, 1], any resolution) over it, mask outlined."""
    height, width = image.shape
    extent = (0, width, height, 0)  # the map spans the image whatever its resolution
    axis.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    cam = np.clip(cam, 0.0, 1.0)
    axis.imshow(
        cam,
        cmap=CAM_CMAP,
        vmin=0,
        vmax=1,
        alpha=alpha * cam,
        interpolation="bilinear",
        extent=extent,
    )
    if mask is not None and mask.any():
        axis.contour(
            mask.astype(float),
            levels=[0.5],
            colors=MASK_COLOR,
            linewidths=1.0,
            extent=extent,
            origin="upper",
        )
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.axis("off")


def _draw_pair(
    figure, image, cam, alpha, mask, caption: str, overlay: str = "Grad-CAM overlay"
) -> None:
    """Original and overlay side by side in `figure` (a (sub)figure), captioned over both."""
    plain, axis = figure.subplots(1, 2)
    plain.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    plain.axis("off")
    plain.set_title("original", fontsize=8)
    _draw_cam(axis, image, cam, alpha, mask)
    axis.set_title(overlay, fontsize=8)
    figure.suptitle(caption, fontsize=9)


def _colorbar(figure, label: str) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(Normalize(0, 1), CAM_CMAP)
    axes = figure.add_axes((0.25, 0.12, 0.2, 0.76))  # its own subfigure: placed by hand
    bar = figure.colorbar(mappable, cax=axes)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _mask_legend(figure) -> None:
    from matplotlib.lines import Line2D

    handle = Line2D([], [], color=MASK_COLOR, linewidth=1.5)
    figure.legend([handle], [MASK_LABEL], loc="outside lower center", fontsize=8, frameon=False)


def cam_figure(
    image: np.ndarray,
    cam: np.ndarray,
    title: str,
    scale_label: str,
    alpha: float = 0.6,
    mask: np.ndarray | None = None,
    overlay: str = "Grad-CAM overlay",
) -> Figure:
    """One image: the original beside its Grad-CAM (or `overlay`) overlay, a colour bar
    saying what the map's scale means, and the mask outline's legend when there is a mask."""
    panel = {"image": image, "cam": cam, "mask": mask, "caption": title, "overlay": overlay}
    return cam_grid([panel], scale_label, alpha)


def cam_grid(
    panels: list[dict], scale_label: str, alpha: float = 0.6, title: str = "", per_row: int = 3
) -> Figure:
    """(original, overlay) pairs, `per_row` to a row, each captioned with panel["caption"];
    one colour bar; a legend for mask outlines if any panel has a mask. Only as many pair
    slots as there are panels are drawn (a grid is never padded with empty axes)."""
    if not panels:
        raise ValueError("a Grad-CAM grid needs at least one image")
    cols = min(per_row, len(panels))
    rows = -(-len(panels) // cols)
    figure = Figure(figsize=(4.6 * cols + 1.1, 3.0 * rows + 0.9), layout="constrained")
    body, side = figure.subfigures(1, 2, width_ratios=(4.6 * cols, 1.1))
    slots = body.subfigures(rows, cols, squeeze=False)
    for slot, panel in zip(slots.flat, panels, strict=False):
        _draw_pair(
            slot,
            panel["image"],
            panel["cam"],
            alpha,
            panel.get("mask"),
            panel["caption"],
            panel.get("overlay", "Grad-CAM overlay"),
        )
    _colorbar(side, scale_label)
    if any(panel.get("mask") is not None for panel in panels):
        _mask_legend(figure)
    if title:
        figure.suptitle(title, fontsize=11)
    _freeze_layout(figure)
    return figure


def _freeze_layout(figure: Figure, decimals: int = 6) -> None:
    """Solve the constrained layout once, round every subfigure box and axes position, and
    draw with the layout engine off. The solver's answer differs in its last bits from draw to
    draw (it starts from the previous draw's positions) and from process to process; a mask
    outline's vertices lie on a regular half-pixel grid, so a shift of 1e-13 px moved some of
    them across Agg's 1/256-pixel rounding and 20-47 outline pixels of a grid came out one
    intensity level apart between forced reruns (issue 23). Rounded to 1e-6 of the figure,
    positions are the same numbers in every process, and so are the drawn bytes."""
    figure.draw_without_rendering()  # runs the layout engine

    def rounded(box: Bbox) -> Bbox:
        return Bbox(np.round(box.get_points(), decimals))

    def freeze(parent) -> None:
        for sub in parent.subfigs:
            sub._redo_transform_rel_fig(bbox=rounded(sub.bbox_relative))  # as the layout does
            freeze(sub)
        for axes in parent.axes:
            axes.set_position(rounded(axes.get_position(original=True)), which="both")

    figure.set_layout_engine("none")
    freeze(figure)


GRADCAM_OUTCOMES = ("correct", "wrong")


GRIDS, OVERLAYS = "grids", "overlays"  # sub-folders of the gradcam output (cxr.core.layout)


# What the stage's maps are: the predicted class's, each scaled to its own maximum.
GRID_SCALE = "Grad-CAM of the predicted class\n(each map scaled to its own maximum)"


def short_name(name: str, width: int = 30) -> str:
    """A file name shortened in the middle to fit a caption."""
    return name if len(name) <= width else f"{name[: width // 2 - 1]}…{name[-(width // 2) :]}"


def cam_caption(file: str, true: str, predicted: str, probability: float) -> str:
    return (
        f"{short_name(file)}\ntrue {true} · predicted {predicted}\n"
        f"p({predicted}) = {probability:.2f}"
    )


def write_gradcam_overlays(
    folder: Path,
    files: list[Path],
    labels: np.ndarray,
    cams: np.ndarray,
    probabilities: np.ndarray,
    masks: list[np.ndarray | None],
    classes: tuple[str, ...],
    per_class: int,
    alpha: float,
    desc: str = "",
) -> dict[str, int]:
    """`folder`/overlays/<Class>/{correct,wrong}/<image>.png: up to `per_class` figures of the
    predicted class's map per class and outcome, and one grid of them each
    (`folder`/grids/<Class>_{correct,wrong}.png; none for an outcome without images). Images
    are read from `files` at display size. Returns the number of images drawn per grid
    (progress by class under `desc`, if given)."""
    correct = probabilities.argmax(1) == labels
    drawn: dict[str, int] = {}
    with atomic_dir(folder) as out:
        grid_out, overlay_out = out / GRIDS, out / OVERLAYS
        rows = list(enumerate(classes))
        for k, name in progress(rows, desc, unit="classes") if desc else rows:
            in_class = int((labels == k).sum())
            for outcome, wanted in zip(GRADCAM_OUTCOMES, (True, False), strict=True):
                chosen = np.flatnonzero((labels == k) & (correct == wanted))
                if not len(chosen):
                    continue
                panels = []
                for i in chosen[:per_class]:
                    predicted = int(probabilities[i].argmax())
                    panel = {
                        "image": display_image(files[i]),
                        "cam": cams[i],
                        "mask": masks[i],
                        "caption": cam_caption(
                            files[i].name, name, classes[predicted], probabilities[i, predicted]
                        ),
                    }
                    panels.append(panel)
                    figure = cam_grid([panel], GRID_SCALE, alpha)
                    save_figure(figure, overlay_out / name / outcome / f"{files[i].stem}.png")
                verb = "correctly" if wanted else "wrongly"
                title = (
                    f"{name}: {len(chosen)} of {in_class} test images {verb} classified"
                    f" (showing {len(panels)})"
                )
                save_figure(
                    cam_grid(panels, GRID_SCALE, alpha, title), grid_out / f"{name}_{outcome}.png"
                )
                drawn[f"{name}_{outcome}"] = len(panels)
    return drawn
