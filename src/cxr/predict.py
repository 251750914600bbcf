"""`cxr-predict`: class probabilities (and optionally a Grad-CAM overlay) for image files.

Preprocessing is the evaluation path's own: `cxr.images.read_gray8` → `cxr.data.preprocess`
at the checkpoint's image size → `cxr.data.Normalize`. A file that cannot be read gets an
error line naming it; the other files are still scored, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cxr.errors import CxrError


@dataclass(frozen=True)
class Prediction:
    image: str
    probabilities: dict[str, float] | None = None
    error: str | None = None

    @property
    def predicted(self) -> str | None:
        if self.probabilities is None:
            return None
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {
            "image": self.image,
            "predicted": self.predicted,
            "probabilities": self.probabilities,
        }


def cam_path(out: Path, image: Path, several: bool) -> Path:
    """OUT.png for one image; OUT_<image stem>.png for each of several."""
    return out.with_name(f"{out.stem}_{image.stem}{out.suffix}") if several else out


def predict_files(
    paths: Sequence[Path],
    model_path: Path,
    cam_out: Path | None = None,
    label: str | None = None,
    target_layer: str = "auto",
    method: str = "gradcam",
) -> list[Prediction]:
    """Score every file; unreadable ones become a Prediction with `error` set."""
    from cxr.data import Normalize, load_pixels  # evaluation's decode and resize
    from cxr.images import BadImageError
    from cxr.models import load_checkpoint

    model, card = load_checkpoint(model_path, "cpu")
    if label is not None and label not in card.classes:
        raise CxrError(f"--label {label!r}: the model's classes are {list(card.classes)}")
    normalize = Normalize(card.arch)
    results = []
    for path in paths:
        try:
            pixels = load_pixels((Path(path),), card.image_size)
        except (BadImageError, OSError) as err:
            results.append(Prediction(str(path), error=str(err)))
            continue
        with torch.no_grad():
            probs = model(normalize(pixels)).softmax(1)[0].numpy()
        results.append(
            Prediction(
                str(path), {c: round(float(p), 6) for c, p in zip(card.classes, probs, strict=True)}
            )
        )
        if cam_out is not None:
            target = card.classes.index(label) if label else int(probs.argmax())
            out = cam_path(cam_out, Path(path), len(paths) > 1)
            write_cam(model, card.arch, pixels, target, out, target_layer, method, card.classes)
    return results


def write_cam(
    model: torch.nn.Module,
    arch: str,
    pixels: torch.Tensor,
    target: int,
    out: Path,
    layer: str,
    method: str,
    classes: tuple[str, ...],
) -> None:
    """Grad-CAM of class `target` over the image, saved as a PNG overlay."""
    from cxr.data import Normalize
    from cxr.gradcam import GradCAM, choose_layer
    from cxr.plots import overlay_figure, save_figure

    _, module = choose_layer(model, arch, pixels.shape[-1], layer)
    with GradCAM(model, module, method) as explainer:
        cam, probs = explainer(Normalize(arch)(pixels), torch.tensor([target]))
    title = f"Grad-CAM: {classes[target]} (p={float(probs[0, target]):.2f})"
    save_figure(overlay_figure(pixels[0, 0].numpy(), cam[0].numpy(), title, 0.45), out)


def table(results: list[Prediction]) -> str:
    """A plain-text table: image, predicted class, one probability column per class."""
    classes = next((list(r.probabilities) for r in results if r.probabilities), [])
    width = max(len("image"), *(len(r.image) for r in results))
    lines = [f"{'image':<{width}}  {'predicted':<16}" + "".join(f"{c:>17}" for c in classes)]
    for r in results:
        if r.probabilities is None:
            lines.append(f"{r.image:<{width}}  ERROR: {r.error}")
        else:
            probs = "".join(f"{r.probabilities[c]:>17.4f}" for c in classes)
            lines.append(f"{r.image:<{width}}  {r.predicted:<16}{probs}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="cxr-predict",
        description="Class probabilities for chest X-ray images from a trained checkpoint.",
    )
    cli.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    cli.add_argument("--model", type=Path, default=Path("models/model.pt"))
    cli.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cli.add_argument(
        "--cam",
        type=Path,
        metavar="OUT.png",
        help="write a Grad-CAM overlay (OUT_<image>.png for several images)",
    )
    cli.add_argument(
        "--label", metavar="CLASS", help="class explained by --cam (default: predicted)"
    )
    cli.add_argument("--target-layer", default="auto", help="layer for --cam (default: auto)")
    cli.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        results = predict_files(
            args.images, args.model, args.cam, args.label, args.target_layer, args.method
        )
    except CxrError as err:
        print(f"cxr-predict: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(table(results))
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"cxr-predict: error: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
