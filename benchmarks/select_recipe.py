"""Choose among recipes without the test split: patient-grouped k-fold cross-validation over
cxr3's train and val splits pooled (411 images instead of val's 78), scored by the balanced
accuracy of the pooled out-of-fold predictions.

Each fold trains a recipe on the other folds and keeps its epoch by the held-out fold (the
recipe's own `train.select_by`), so scores are somewhat optimistic, alike for every recipe. Folds
never split a patient or a near-duplicate group (the split stage's own groups). A recipe that
oversamples (`augment.target`) has Augmentor grow each fold's training part alone. The test split
is neither read nor scored: `real_recipes.py --only <name>` does that for the winner. In
`train.reproducible` mode (params.yaml) the folds train on the kernels the stages pin.

    python benchmarks/select_recipe.py --data ../shared/data/cxr3 --folds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from real_recipes import EVERY, RECIPE, prepare, project_params, with_overrides
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.model_selection import StratifiedGroupKFold

from cxr.core.config import Params
from cxr.data.augment import augment_train
from cxr.data.links import link_or_copy
from cxr.data.metadata import balance_groups, metadata_for, read_metadata
from cxr.data.split import duplicate_groups, leakage_groups
from cxr.evaluation.subgroups import subgroup_report
from cxr.training.inference import predict_logits
from cxr.training.loop import fit
from cxr.training.models import build_model, resolve_weights
from cxr.training.pixels import PixelSet, cached_split, index_folder
from cxr.training.preprocessing import Preprocessing
from cxr.training.runtime import configure
from cxr.training.state import SELECTION, EpochStats

# Every recipe can be cross-validated: one that oversamples (augment.target) has each fold's
# training part augmented on its own, so no held-out image's augmented copy trains.
CANDIDATES = EVERY


def leakage_units(data: Path, params: Params) -> pd.Series:
    """Each image's (`<Class>/<name>`) unit: patient and duplicate groups merged, as in split."""
    manifest = pd.read_csv(data / "manifest.csv", keep_default_na=False, dtype={"phash": str})
    metadata = pd.read_csv(data / "metadata.csv", keep_default_na=False, dtype=str)
    duplicates, _ = duplicate_groups(manifest, params.split.near_duplicate_distance)
    return leakage_groups(manifest, metadata, duplicates, params.split)[0]


def pooled(data: Path, params: Params) -> PixelSet:
    """train + val of the split, decoded at the recipe's size and preprocessing."""
    prep = Preprocessing.from_config(params.preprocess)
    classes = index_folder(data / "split" / "train").classes
    parts = [
        cached_split(data / "split" / name, params.train.image_size, classes, prep=prep)
        for name in ("train", "val")
    ]
    return PixelSet(
        classes,
        parts[0].files + parts[1].files,
        torch.cat([part.pixels for part in parts]),
        torch.cat([part.labels for part in parts]),
    )


def subset(pool: PixelSet, index: np.ndarray) -> PixelSet:
    rows = torch.as_tensor(index)
    files = tuple(pool.files[i] for i in index)
    return PixelSet(pool.classes, files, pool.pixels[rows], pool.labels[rows])


def per_source(
    data: Path, files: tuple[Path, ...], truth: np.ndarray, predicted: np.ndarray, classes
) -> dict[str, dict]:
    """Out-of-fold images, balanced accuracy and the recall of each class present, within each
    source (the evaluate stage's subgroups, without intervals): the pooled score weighs sources
    by their share of train+val, which the test split need not share (on cxrmix, 64 of
    Hannover's 70 images are in train+val, 3 in test)."""
    metadata = metadata_for(files, read_metadata(data / "metadata.csv"))
    one_hot = np.eye(len(classes))[predicted]
    alone = np.arange(len(truth))  # no intervals: resamples 0
    report = subgroup_report(truth, one_hot, metadata, classes, ["source"], (1,), 0, 0.95, 0, alone)
    return {
        source: {
            "images": row["images"],
            "balanced_accuracy": row["balanced_accuracy"],
            "recall": {c: r for c, r in row["recall"].items() if r is not None},
        }
        for source, row in report.get("source", {}).items()
    }


def augmented(pool: PixelSet, rows: np.ndarray, params: Params, scratch: Path) -> PixelSet:
    """The fold's training part (`rows` of the pool) as the augment stage would write it from a
    train split holding only those images, decoded at the recipe's size and preprocessing."""
    part = scratch / "train"
    for i in rows:
        source = pool.files[i]
        target = part / pool.classes[pool.labels[i]] / source.name
        if target.exists():  # one name in train and val: the download stage's names are unique
            raise SystemExit(f"{source.name}: two images of one class share the name")
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, target)
    augment_train(part, scratch / "augmented", params.augment)
    prep = Preprocessing.from_config(params.preprocess)
    return cached_split(
        scratch / "augmented" / "train", params.train.image_size, pool.classes, prep=prep
    )


def patience_keeping(history: list[EpochStats], select_by: str) -> int:
    """The smallest `train.early_stopping_patience` that keeps the epoch the full run keeps:
    the longest wait, in epochs, between one best-so-far epoch and the next. Training stops
    `patience` epochs after its latest best, and the epochs before that are the same run, so
    any patience at least this long keeps the same weights (and any shorter one does not)."""
    score = SELECTION[select_by]
    best, longest = 1, 1
    for stats in history[1:]:
        if score(stats) > score(history[best - 1]):
            longest, best = max(longest, stats.epoch - best), stats.epoch
    return longest


def fold_seeds(seed: int, folds: int) -> list[int]:
    """Each fold's training seed: 0, 1, ... for `--seed 0` (the figures in docs/results.md);
    another `--seed` gives other seeds on the same folds, so only training's randomness moves."""
    return [seed * folds + fold for fold in range(folds)]


def cross_validate(
    data: Path, params: Params, folds: int, threads: int, scratch: Path, seed: int = 0
) -> dict:
    """Out-of-fold balanced accuracy and per-class recall of one recipe."""
    cfg = dataclasses.replace(params.train, threads=threads)
    device = torch.device("cpu")
    pool = pooled(data, params)
    units = leakage_units(data, params)
    groups = [units[f"{path.parent.name}/{path.name}"] for path in pool.files]
    balance = None  # train.balance_by's value per image (train+val is unaugmented)
    oversample = params.augment.target != "none"
    if cfg.balance_by and oversample:  # augmented copies have no metadata rows of their own
        raise SystemExit("train.balance_by with augment.target other than none: not supported")
    if cfg.balance_by:
        metadata = read_metadata(data / "metadata.csv")
        balance = np.array(balance_groups(pool.files, metadata, cfg.balance_by, {}))
    truth = pool.labels.numpy()
    predicted = np.full_like(truth, -1)
    kept: list[int] = []  # each fold's kept epoch: how many epochs the recipe needs
    patience: list[int] = []  # each fold's shortest early-stopping patience keeping that epoch
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=0)  # same folds always
    seeds = fold_seeds(seed, folds)
    for fold, (fit_rows, held_rows) in enumerate(splitter.split(truth, truth, groups)):
        fold_cfg = dataclasses.replace(cfg, seed=seeds[fold])
        configure(fold_cfg, device)
        model = build_model(cfg.model, len(pool.classes), resolve_weights(cfg.model, cfg.weights))
        held = subset(pool, held_rows)
        own = None if balance is None else balance[fit_rows].tolist()
        train = (
            augmented(pool, fit_rows, params, scratch / f"fold-{fold}")
            if oversample
            else subset(pool, fit_rows)
        )
        result = fit(model, train, held, fold_cfg, params.lr, device, groups=own)
        model.load_state_dict(result.best_state)
        kept.append(result.best_epoch)
        patience.append(patience_keeping(result.history, cfg.select_by))
        logits = predict_logits(model, cfg.model, held.pixels, 64, device)
        predicted[held_rows] = logits.argmax(1).numpy()
    assert (predicted >= 0).all()
    recall = recall_score(truth, predicted, average=None, labels=range(len(pool.classes)))
    return {
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "recall": dict(zip(pool.classes, map(float, recall), strict=True)),
        "images": len(truth),
        "kept_epochs": kept,
        "patience_keeping": patience,
        "sources": per_source(data, pool.files, truth, predicted, pool.classes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a source folder (cxr3)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    parser.add_argument(
        "--seed", type=int, default=0, help="training seeds (same folds): the spread of a score"
    )
    args = parser.parse_args()
    raw = project_params(args.data, args.threads)
    names = args.only or list(CANDIDATES)
    scores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-select-") as scratch:
        os.environ.setdefault("CXR_CACHE_DIR", str(Path(scratch) / "pixels"))
        data = prepare(args.data, Path(scratch), with_overrides(raw, RECIPE))
        for name in names:
            start = time.perf_counter()
            params = with_overrides(raw, CANDIDATES[name])
            folds_dir = Path(scratch) / name
            scores[name] = cross_validate(
                data, params, args.folds, args.threads, folds_dir, args.seed
            )
            recall = ", ".join(f"{c} {r:.2f}" for c, r in scores[name]["recall"].items())
            print(
                f"{name:36s} {args.folds}-fold balanced accuracy "
                f"{scores[name]['balanced_accuracy']:.3f} (recall {recall}), kept epochs "
                f"{scores[name]['kept_epochs']} of {params.train.epochs} (an early-stopping "
                f"patience >= {max(scores[name]['patience_keeping'])} keeps them all: "
                f"{scores[name]['patience_keeping']}), "
                f"{(time.perf_counter() - start) / 60:.1f} min",
                flush=True,
            )
            for source, row in scores[name]["sources"].items():
                recall = ", ".join(f"{c} {r:.2f}" for c, r in row["recall"].items())
                print(
                    f"  {source:20s} {row['images']:4d} images, balanced accuracy "
                    f"{row['balanced_accuracy']:.3f} (recall {recall})",
                    flush=True,
                )
    print(f"\nranking ({args.folds}-fold, {scores[names[0]]['images']} train+val images):")
    for name in sorted(scores, key=lambda n: -scores[n]["balanced_accuracy"]):
        print(f"  {scores[name]['balanced_accuracy']:.3f}  {name}")


if __name__ == "__main__":
    main()
