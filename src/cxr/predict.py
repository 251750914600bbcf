"""`cxr-predict`: class probabilities (and optionally a Grad-CAM or LIME figure, and an
accept/refer decision) for image files.

Preprocessing and inference are the evaluation path's own: `cxr.training.pixels.load_pixels`
(decode, resize to the checkpoint's image size, the intensity preprocessing its card names) →
`cxr.training.inference`. A file that cannot
be read gets its error in the output (table row or JSON `error`), printed once; the other files
are still scored, and the exit status is 1.

The Grad-CAM figure shows the original beside the overlay, the explained class and its
probability in the title, and a colour bar. Maps are on one absolute scale per image: the
maps of all classes are computed and divided by the largest of them, so a class the model
finds no evidence for shows a faint map, not a full-strength one.

With a deferral rule (the defer stage's models/deferral.json, beside the model) each image is
also marked `accept` or `refer`: refer when its calibrated top-class confidence is below the
rule's threshold. A rule chosen for another model is refused (it carries the model's sha256).
When the rule carries the defer stage's conformal calibration, each image also gets its
prediction set: the classes it cannot be ruled out of at the rule's alpha
(cxr.evaluation.conformal).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from cxr.core.config import LimeConfig
from cxr.core.errors import CxrError
from cxr.core.fsio import save_figure
from cxr.data.images import BadImageError
from cxr.evaluation.calibration import scale_probabilities
from cxr.evaluation.conformal import sets_from_rule
from cxr.evaluation.deferral import decide, load_rule
from cxr.explanation.faithfulness import explanations
from cxr.explanation.figures import cam_figure, display_image
from cxr.explanation.gradcam import METHODS, choose_layer, compute_cams
from cxr.explanation.lime_explain import display_scaled, lime_maps
from cxr.training.checkpoint import ModelCard, load_checkpoint
from cxr.training.inference import predict_logits
from cxr.training.pixels import load_pixels

CPU = torch.device("cpu")

DEFAULT_MODEL = Path("models/model.pt")


@dataclass(frozen=True)
class Prediction:
    image: str
    probabilities: dict[str, float] | None = None
    error: str | None = None
    cam: str | None = None  # the Grad-CAM figure written for this image
    # with a deferral rule (cxr.evaluation.deferral): calibrated top-class confidence, decision
    confidence: float | None = None
    decision: str | None = None
    # with the rule's conformal calibration: the classes not ruled out at 1 - alpha coverage
    classes_set: tuple[str, ...] | None = None
    set_coverage: float | None = None  # 1 - alpha: the share of such sets holding the truth

    @property
    def predicted(self) -> str | None:
        if self.probabilities is None:
            return None
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        result = {
            "image": self.image,
            "predicted": self.predicted,
            "probabilities": self.probabilities,
        }
        if self.cam is not None:
            result["cam"] = self.cam
        if self.decision is not None:
            result["confidence"], result["decision"] = self.confidence, self.decision
        if self.classes_set is not None:
            result["set"], result["set_coverage"] = list(self.classes_set), self.set_coverage
        return result


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
    deferral: Path | None = None,
    use_deferral: bool = True,
) -> list[Prediction]:
    """Score every file; unreadable ones become a Prediction with `error` set. With a
    deferral rule (`deferral`, else models/deferral.json beside the model) each image is also
    marked accept or refer."""
    if cam_out is not None and not cam_out.parent.is_dir():
        # figures go where the user points, never into folders made up on the way
        raise CxrError(
            f"--cam {cam_out}: folder {cam_out.parent} does not exist; create it first, or "
            "give a path in an existing folder"
        )
    model, card = open_model(model_path)
    rule = load_rule(deferral, model_path) if use_deferral else None
    if label is not None and label not in card.classes:
        raise CxrError(f"--label {label!r}: the model's classes are {list(card.classes)}")
    results = []
    for path in paths:
        try:
            pixels = load_pixels((Path(path),), card.image_size, prep=card.prep)
        except (BadImageError, OSError) as err:
            results.append(Prediction(str(path), error=str(err)))
            continue
        probs = predict_logits(model, card.arch, pixels, 1, CPU).softmax(1)[0].numpy()
        probabilities = {c: round(float(p), 6) for c, p in zip(card.classes, probs, strict=True)}
        written = None
        if cam_out is not None:
            target = card.classes.index(label) if label else int(probs.argmax())
            written = cam_path(cam_out, Path(path), len(paths) > 1)
            write_cam(model, card, Path(path), pixels, target, written, target_layer, method)
        confidence, decision = decide(probs, rule) if rule else (None, None)
        results.append(
            Prediction(
                str(path),
                probabilities,
                cam=None if written is None else str(written),
                confidence=None if confidence is None else round(confidence, 6),
                decision=decision,
            )
        )
    if rule and rule.get("conformal"):
        results = with_sets(results, rule)
    return results


def with_sets(results: list[Prediction], rule: dict) -> list[Prediction]:
    """Each scored image's conformal set under the rule (one calibration for all images)."""
    scored = [r for r in results if r.probabilities is not None]
    if not scored:
        return results
    probabilities = np.array([list(r.probabilities.values()) for r in scored])
    if rule["temperature"] is not None:
        probabilities = scale_probabilities(probabilities, rule["temperature"])
    classes = list(scored[0].probabilities)
    sets = iter(sets_from_rule(rule["conformal"], probabilities))
    coverage = round(1 - rule["conformal"]["alpha"], 6)
    return [
        r
        if r.probabilities is None
        else dataclasses.replace(
            r,
            classes_set=tuple(c for c, kept in zip(classes, next(sets), strict=True) if kept),
            set_coverage=coverage,
        )
        for r in results
    ]


def open_model(path: Path) -> tuple[torch.nn.Module, ModelCard]:
    """The checkpoint at `path`, or a CxrError that names it and says what to do."""

    if not path.is_file():
        hint = (
            "train one with `dvc repro` (it writes models/model.pt)"
            if path == DEFAULT_MODEL
            else f"check the path (the default is {DEFAULT_MODEL})"
        )
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise CxrError(f"--model {path}: {what}; {hint}")
    try:
        return load_checkpoint(path, "cpu")
    except CxrError:
        raise
    except Exception as err:  # not a checkpoint of ours: say so instead of a traceback
        raise CxrError(
            f"--model {path}: not a cxr model checkpoint ({type(err).__name__}: {err})"
        ) from None


def class_maps(
    model: torch.nn.Module, card: ModelCard, pixels: torch.Tensor, layer: str, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of every class for one image, on one absolute scale (divided by the
    largest value of any class's map), and the probabilities."""
    _, module = choose_layer(model, card.arch, pixels.shape[-1], layer)
    with METHODS[method](model, module) as explainer:
        maps = []
        for k in range(len(card.classes)):
            cam, probs = compute_cams(
                explainer, pixels, torch.tensor([k]), CPU, card.arch, relative=False
            )
            maps.append(cam[0])
    stacked = np.stack(maps)
    peak = stacked.max()
    return (stacked / peak if peak > 0 else stacked), probs[0]


def write_cam(
    model: torch.nn.Module,
    card: ModelCard,
    image: Path,
    pixels: torch.Tensor,
    target: int,
    out: Path,
    layer: str,
    method: str,
) -> None:
    """The figure for class `target`: original beside overlay, title with class and
    probability, colour bar on the absolute scale (see `class_maps`); for a method that is no
    Grad-CAM (LIME), its own figure (`lime_figure`)."""
    if method not in METHODS:
        save_figure(lime_figure(model, card, image, pixels, target), out)
        return
    maps, probs = class_maps(model, card, pixels, layer, method)
    predicted = int(probs.argmax())
    name = card.classes[target]
    title = f"{image.name}\nGrad-CAM of {name}: p({name}) = {probs[target]:.2f}"
    if target != predicted:
        title += f" (predicted: {card.classes[predicted]}, p = {probs[predicted]:.2f})"
    scale = f"Grad-CAM of {name}\n(1 = strongest map of any class\nfor this image)"
    save_figure(cam_figure(display_image(image), maps[target], title, scale), out)


def lime_figure(
    model: torch.nn.Module, card: ModelCard, image: Path, pixels: torch.Tensor, target: int
) -> Figure:
    """The LIME figure of class `target` (cxr.explanation.lime_explain, params.yaml's default
    settings): the image beside the map of positive evidence."""
    lime = LimeConfig()
    maps = lime_maps(
        model, card.arch, pixels, np.array([target]), lime.num_samples, lime.segments, 0, CPU
    )
    probs = predict_logits(model, card.arch, pixels, 1, CPU).softmax(1)[0].numpy()
    name = card.classes[target]
    title = f"{image.name}\nLIME of {name}: p({name}) = {probs[target]:.2f}"
    scale = f"LIME evidence for {name}\n(1 = strongest superpixel)"
    return cam_figure(
        display_image(image), display_scaled(maps[0]), title, scale, overlay="LIME overlay"
    )


def table(results: list[Prediction]) -> str:
    """A plain-text table: image, predicted class, one probability column per class, and the
    decision (accept/refer) when a deferral rule applies, and the conformal set when it carries
    one."""
    classes = next((list(r.probabilities) for r in results if r.probabilities), [])
    deferral = any(r.decision is not None for r in results)
    coverage = next((r.set_coverage for r in results if r.set_coverage is not None), None)
    width = max(len("image"), *(len(r.image) for r in results))
    lines = [
        f"{'image':<{width}}  {'predicted':<16}"
        + "".join(f"{c:>17}" for c in classes)
        + (f"{'confidence':>12}  decision" if deferral else "")
        + ("  set" if coverage is not None else "")
    ]
    for r in results:
        if r.probabilities is None:
            lines.append(f"{r.image:<{width}}  ERROR: {r.error}")
        else:
            probs = "".join(f"{r.probabilities[c]:>17.4f}" for c in classes)
            decided = f"{r.confidence:>12.4f}  {r.decision:<8}" if r.decision else ""
            shown = "  {" + ", ".join(r.classes_set) + "}" if r.classes_set is not None else ""
            lines.append(f"{r.image:<{width}}  {r.predicted:<16}{probs}{decided}{shown}".rstrip())
    if coverage is not None:
        lines.append(
            f"set: the classes not ruled out; the true class is in such sets for at least "
            f"{coverage:.0%} of images like the val split's (conformal, defer stage)"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="cxr-predict",
        description="Class probabilities for chest X-ray images from a trained checkpoint, "
        "optionally with a Grad-CAM or LIME figure per image and an accept/refer decision.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cli.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    cli.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="trained checkpoint")
    cli.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cli.add_argument(
        "--cam",
        type=Path,
        metavar="OUT.png",
        help="write a Grad-CAM figure: original beside overlay, colour bar "
        "(OUT_<image>.png for several images); not written by default",
    )
    cli.add_argument(
        "--label",
        metavar="CLASS",
        help="class explained by --cam; by default each image's predicted class",
    )
    cli.add_argument(
        "--target-layer",
        default="auto",
        help="layer for --cam: auto (the architecture's deepest with a map of >= 8 cells a "
        "side) or a dotted path such as layer4",
    )
    cli.add_argument(
        "--method", default="gradcam", choices=explanations(), help="explanation drawn by --cam"
    )
    cli.add_argument(
        "--deferral",
        type=Path,
        metavar="RULE.json",
        help="deferral rule (the defer stage's models/deferral.json): marks images whose "
        "calibrated confidence is below its threshold 'refer'; default: deferral.json beside "
        "--model, if there is one",
    )
    cli.add_argument("--no-deferral", action="store_true", help="do not mark images accept/refer")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        results = predict_files(
            args.images,
            args.model,
            args.cam,
            args.label,
            args.target_layer,
            args.method,
            args.deferral,
            not args.no_deferral,
        )
    except CxrError as err:
        print(f"cxr-predict: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(table(results))
    failed = [r.image for r in results if r.error is not None]
    if failed:  # each error is in the output once; this only says which files and why exit 1
        print(
            f"cxr-predict: {len(failed)} of {len(results)} images not scored: {', '.join(failed)}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
