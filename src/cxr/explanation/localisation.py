"""Localisation scores: how much of a heat map lies on the lesion or lung masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def localisation(cam: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How much of a heat map lies on a mask.

    energy_in_mask: share of the map's total mass inside the mask; mask_area: the mask's share
    of the image (what a uniform map would score); pointing_hit: whether the map's peak is
    inside the mask (the pointing game).
    """
    inside = mask.astype(bool)
    total = float(cam.sum())
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return {
        "energy_in_mask": float(cam[inside].sum()) / total if total > 0 else 0.0,
        "mask_area": float(inside.mean()),
        "pointing_hit": float(inside[peak]),
    }


def load_masks(masks_dir: Path, files: list[Path], size: int) -> list[np.ndarray | None]:
    """Each file's mask (`<masks_dir>/<Class>/<name>`) resized to the model input, or None
    where there is none or it is empty."""
    from PIL import Image

    from cxr.data.images import read_mask

    masks: list[np.ndarray | None] = []
    for path in files:
        mask_path = masks_dir / path.parent.name / path.name
        if not mask_path.is_file():
            masks.append(None)
            continue
        mask = read_mask(mask_path).resize((size, size), Image.Resampling.NEAREST)
        array = np.asarray(mask) > 0
        masks.append(array if array.any() else None)
    return masks


def localisation_report(
    cams: np.ndarray, masks: list[np.ndarray | None], labels: np.ndarray, classes: tuple[str, ...]
) -> dict:
    """Mean localisation scores per class over the images that have a (non-empty) mask."""
    per_class: dict[str, dict[str, float]] = {}
    everything: list[dict[str, float]] = []
    for k, name in enumerate(classes):
        scores = [
            localisation(cams[i], mask)
            for i, mask in enumerate(masks)
            if mask is not None and labels[i] == k
        ]
        everything += scores
        if scores:
            per_class[name] = _mean_scores(scores)
    return {
        "images_with_masks": len(everything),
        "overall": _mean_scores(everything) if everything else {},
        "per_class": per_class,
    }


def _mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    energy = float(np.mean([s["energy_in_mask"] for s in scores]))
    area = float(np.mean([s["mask_area"] for s in scores]))
    return {
        "images": len(scores),
        "energy_in_mask": round(energy, 6),
        "mask_area": round(area, 6),
        # > 1: the maps concentrate on the masks; 1: no better than a uniform map.
        "energy_over_area": round(energy / area, 6) if area > 0 else 0.0,
        "pointing_hit_rate": round(float(np.mean([s["pointing_hit"] for s in scores])), 6),
    }
