"""Recipes on real X-rays: scratch against ImageNet-pretrained (head only, full, gradual
unfreeze), with test accuracy, balanced accuracy and macro-F1 (95 % bootstrap intervals), the
majority baseline, and the minutes each took on this machine's CPU.

The data go through the pipeline's own download, split (patient-grouped) and augment code
into a scratch folder; each recipe then runs the train stage's `fit` and the evaluate stage's
metrics on the held-out test split, once per training seed (the split stays the same).

    python benchmarks/real_recipes.py --data ../shared/data/cxr3            # every recipe
    python benchmarks/real_recipes.py --data ../shared/data/cxr3 --only pretrained_full
    python benchmarks/real_recipes.py --data ../shared/data/cxr3 --only head_smoothing_0.1 ...
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.core.config import Params, ParamsError, parse_params, read_params_file
from cxr.data.augment import augment_train
from cxr.data.sources import fetch
from cxr.data.split import split_dataset
from cxr.evaluation.metrics import baseline_report, classification_metrics
from cxr.training.inference import predict_logits
from cxr.training.kernels import enter_reproducible_mode
from cxr.training.loop import fit
from cxr.training.models import build_model, resolve_weights
from cxr.training.pixels import cached_split, index_folder, load_split
from cxr.training.preprocessing import Preprocessing
from cxr.training.runtime import configure

# Keys are params.yaml keys, as `dvc exp run -S` takes them. RECIPE is what every row starts
# from (the README's recipe until cross-validation chose the head-only one); each row changes
# what its name says.
RECIPE = {
    "augment.target": "none",
    "train.image_size": 224,
    "train.epochs": 8,
    "lr": 0.001,
}
# The classifier head alone, on the frozen backbone's features (computed once per image).
HEAD = {
    **RECIPE,
    "train.finetune": "head",
    "train.batch_augment.enabled": False,
    "train.epochs": 20,
    "lr": 0.003,
}
# The backbone's last two stages and the head, on their input computed once per image.
TOP = {**HEAD, "train.finetune": "top", "train.top_blocks": 2}
RECIPES: dict[str, dict[str, Any]] = {
    "scratch_resnet18_64px_old_default": {
        "augment.target": "majority",
        "train.model": "resnet18",
        "train.weights": "none",
        "train.image_size": 64,
        "train.epochs": 4,
        "lr": 0.001,
        "train.optimizer": "adam",
        "train.weight_decay": 0.0,
        "train.scheduler": "step",
        "train.select_by": "val_loss",
        "train.imbalance": "none",
    },
    "scratch_lite0": {**RECIPE, "train.weights": "none"},
    "pretrained_head_only": HEAD,
    # Best of the head-only variants on the single val split (mean over seeds 0-2), 7th of
    # 14 on cross-validation (select_recipe.py): kept as the row that shows the difference.
    "pretrained_head_label_smoothing": {**HEAD, "train.label_smoothing": 0.05},
    # The last two stages of the backbone adapt too, on their input computed once per image
    # (finetune: top), at 288 px, with label smoothing 0.2 (NIH's labels are mined from
    # reports, and some are wrong): the best on cxrmix's 3-fold cross-validation
    # (select_recipe.py).
    "pretrained_top_2_blocks_288px_smoothing_0.2": {
        **TOP,
        "train.image_size": 288,
        "train.label_smoothing": 0.2,
    },
    # With label smoothing 0.1: the recipe until smoothing 0.2 was cross-validated.
    "pretrained_top_2_blocks_288px_smoothing_0.1": {
        **TOP,
        "train.image_size": 288,
        "train.label_smoothing": 0.1,
    },
    # Without label smoothing: the recipe before smoothing was cross-validated.
    "pretrained_top_2_blocks_288px": {**TOP, "train.image_size": 288},
    # The same at 224 px: the recipe before 288 px was cross-validated.
    "pretrained_top_2_blocks": TOP,
    "pretrained_full": RECIPE,
    "pretrained_unfreeze_after_2": {
        **RECIPE,
        "train.finetune": "unfreeze",
        "train.unfreeze_after": 2,
    },
}

# The recipe README's `<!-- recipe:cpu -->` block runs (tests/test_readme.py holds them equal):
# the best on cross-validation over cxrmix's train+val (select_recipe.py), test unread.
README_RECIPE = "pretrained_top_2_blocks_288px_smoothing_0.2"
THE_RECIPE = RECIPES[README_RECIPE]  # what the later candidates below change
# The recipe before smoothing 0.2: what the earlier candidates below change.
SMOOTHING_01 = RECIPES["pretrained_top_2_blocks_288px_smoothing_0.1"]

# The other head-only candidates (`--only head_...`; not in the default run), each a change of
# `pretrained_head_only`; select_recipe.py ranks them with the table's rows.
VARIANTS: dict[str, dict[str, Any]] = {
    "head_lr_0.01": {**HEAD, "lr": 0.01},
    "head_lr_0.001_smoothing_0.1": {**HEAD, "lr": 0.001, "train.label_smoothing": 0.1},
    "head_40_epochs": {**HEAD, "train.epochs": 40},
    "head_40_epochs_smoothing_0.1": {**HEAD, "train.epochs": 40, "train.label_smoothing": 0.1},
    "head_last_epoch": {**HEAD, "train.select_by": "last"},
    "head_smoothing_0.1": {**HEAD, "train.label_smoothing": 0.1},
    "head_smoothing_0.2": {**HEAD, "train.label_smoothing": 0.2},
    "head_lite1_240px": {**HEAD, "train.model": "efficientnet_lite1", "train.image_size": 240},
    "head_lite2_260px": {**HEAD, "train.model": "efficientnet_lite2", "train.image_size": 260},
    "head_clahe": {**HEAD, "preprocess.method": "clahe"},
    "head_clahe_smoothing_0.05": {
        **HEAD,
        "preprocess.method": "clahe",
        "train.label_smoothing": 0.05,
    },
    "head_clahe_smoothing_0.1": {
        **HEAD,
        "preprocess.method": "clahe",
        "train.label_smoothing": 0.1,
    },
    "full_smoothing_0.1": {**RECIPE, "train.label_smoothing": 0.1},
    # cxrmix's images are 320 px on their short side: more of their detail reaches the model
    "full_256px": {**RECIPE, "train.image_size": 256},
    # the backbone's last stages adapt too, on their cached input (finetune: top)
    "top_2_blocks": {**TOP, "lr": 0.001},
    "top_3_blocks": {**TOP, "train.top_blocks": 3, "lr": 0.001},
    "top_3_blocks_lr_0.003": {**TOP, "train.top_blocks": 3},
    "top_2_blocks_288px": {**TOP, "lr": 0.001, "train.image_size": 288},
    "top_3_blocks_288px_lr_0.003": {**TOP, "train.top_blocks": 3, "train.image_size": 288},
    "top_2_blocks_smoothing_0.1": {**TOP, "lr": 0.001, "train.label_smoothing": 0.1},
    # the recipe (smoothing 0.1) on CLAHE-equalised images: each source's contrast evened
    # out, so less of the source's look reaches the model
    "top_2_blocks_288px_smoothing_0.1_clahe": {
        **SMOOTHING_01,
        "preprocess.method": "clahe",
    },
    # the recipe (smoothing 0.1) drawing every class equally often (sampler) and, within a
    # class, every source equally often: ieee8023's few Normal and Pneumonia films weigh as
    # much as its COVID ones, so "looks like ieee8023" stops paying as "COVID"
    "top_2_blocks_288px_smoothing_0.1_balance_source": {
        **SMOOTHING_01,
        "train.imbalance": "sampler",
        "train.balance_by": "source",
    },
    # its control: the sampler balancing the classes only
    "top_2_blocks_288px_smoothing_0.1_sampler": {
        **SMOOTHING_01,
        "train.imbalance": "sampler",
    },
    # one step further along the axis that chose the recipe (0 -> 0.1 -> 0.2 each won
    # cross-validation): more of each target's weight spread over the other classes
    "top_2_blocks_288px_smoothing_0.3": {
        **THE_RECIPE,
        "train.label_smoothing": 0.3,
    },
    # the recipe on Augmentor's augmented copies (params.yaml's operations): every class grown
    # to 2.5 times the largest, so the cached-input training sees new views of each film instead
    # of the same 717 films 20 times; 7 epochs make about the recipe's number of steps
    "top_2_blocks_288px_smoothing_0.2_augmented_2.5x": {
        **THE_RECIPE,
        "augment.target": 2.5,
        "train.epochs": 7,
    },
    # the recipe in three quarters of its epochs (the cosine schedule decays sooner): its kept
    # epochs on cross-validation were 9, 11 and 8 of 20, and training is most of its minutes
    "top_2_blocks_288px_smoothing_0.2_15_epochs": {
        **THE_RECIPE,
        "train.epochs": 15,
    },
    # the recipe at 320 px, cxrmix's short side: every pixel the files hold reaches the model
    # (288 px added about 0.02 over 224 px on cross-validation)
    "top_2_blocks_320px_smoothing_0.2": {
        **THE_RECIPE,
        "train.image_size": 320,
    },
    # the recipe on EfficientNet-Lite1 (ImageNet, 240 px native; about 1.3 times Lite0's
    # work at 288 px): head-only, Lite1 and Lite2 scored below Lite0, but with their last
    # stages adapting a larger backbone may carry more of the film's detail
    "top_2_blocks_288px_smoothing_0.2_lite1": {
        **THE_RECIPE,
        "train.model": "efficientnet_lite1",
    },
    # the recipe at a third of its peak lr: the last stages move less far from their ImageNet
    # weights (lr 0.003 was chosen on the head-only recipe, before the stages trained)
    "top_2_blocks_288px_smoothing_0.2_lr_0.001": {
        **THE_RECIPE,
        "lr": 0.001,
    },
    # the recipe keeping its last epoch (the cosine schedule ends at lr 0) instead of the best
    # by val balanced accuracy: no epoch is chosen on the held-out fold, so its cross-validation
    # score is not lifted by that choice, and a noisy val split cannot pick a lucky epoch
    "top_2_blocks_288px_smoothing_0.2_last_epoch": {
        **THE_RECIPE,
        "train.select_by": "last",
    },
    # the recipe in batches of 16: twice the optimizer steps, each noisier, at the same lr
    "top_2_blocks_288px_smoothing_0.2_batch_16": {
        **THE_RECIPE,
        "train.batch_size": 16,
    },
    # the recipe with five times the weight decay: the trained stages held nearer zero (AdamW's
    # decoupled decay), against fitting the hospitals' look in 717 films
    "top_2_blocks_288px_smoothing_0.2_weight_decay_0.05": {
        **THE_RECIPE,
        "train.weight_decay": 0.05,
    },
    # ten times the recipe's weight decay: whether 0.05's lead over it is a slope or noise
    "top_2_blocks_288px_smoothing_0.2_weight_decay_0.1": {
        **THE_RECIPE,
        "train.weight_decay": 0.1,
    },
    # the recipe keeping the epoch of lowest val loss: a score over every film's probability,
    # where balanced accuracy moves only when a film crosses a decision boundary, so the kept
    # epoch depends less on which few val films happened to cross
    "top_2_blocks_288px_smoothing_0.2_val_loss": {**THE_RECIPE, "train.select_by": "val_loss"},
    # the recipe keeping a moving average of its weights (Polyak averaging), decay 0.99 per
    # step: about the last 100 steps, four epochs of cxrmix's folds. Averaging weights along
    # the path (SWA, SWAD) flattens the minimum found and has carried better to unseen domains
    # than the weights at any one step.
    "top_2_blocks_288px_smoothing_0.2_ema_0.99": {**THE_RECIPE, "train.ema_decay": 0.99},
    # the recipe with mixup, alpha 0.2 (torchvision's classification reference uses 0.2): the
    # trained stages see blends of two films' cached inputs against blended labels, often an
    # NIH film with another hospital's, so a feature that tells the hospital apart might be
    # rewarded less (it was not: 0.795 on cross-validation, docs/results.md)
    "top_2_blocks_288px_smoothing_0.2_mixup_0.2": {**THE_RECIPE, "train.mixup_alpha": 0.2},
    # the recipe stopping 5 epochs after its latest best val score: any patience >= 5 keeps
    # every fold's epoch on the 3-fold cross-validation (select_recipe.py prints it), but on
    # the leave-two-out run it stopped at epoch 8 and kept epoch 3 (docs/results.md)
    "top_2_blocks_288px_smoothing_0.2_patience_5": {
        **THE_RECIPE,
        "train.early_stopping_patience": 5,
    },
}
EVERY = {**RECIPES, **VARIANTS}  # what `--only` takes


def with_overrides(raw: dict, overrides: dict[str, Any]) -> Params:
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value
    return parse_params(raw)


def prepare(source: Path, out: Path, params: Params) -> Path:
    """download → split → augment into `out`, as the stages do."""
    data = out / "data"
    fetch(
        params.data,
        Path.cwd(),
        data / "raw",
        data / "masks",
        data / "manifest.csv",
        data / "rejected.csv",
        data / "metadata.csv",
    )
    summary = split_dataset(
        data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split", params.split
    )
    print("split:", json.dumps(summary["splits"]), json.dumps(summary["groups"]))
    augment_train(
        data / "split" / "train", data / f"augmented-{params.augment.target}", params.augment
    )
    return data


def project_params(data: Path, threads: int) -> dict:
    """params.yaml as read, with `data.source` set to `data`. In `train.reproducible` mode the
    process first re-executes itself with the kernels and threads the pipeline's stages pin,
    so a candidate scores what `dvc exp run` would train on this CPU (and no AVX-512 warning).
    A malformed params.yaml stops here, naming the key, before anything is pinned or read."""
    raw = read_params_file("params.yaml")
    try:
        reproducible = parse_params(raw).train.reproducible
    except ParamsError as err:  # the keys and their fixes, without a traceback
        raise SystemExit(str(err)) from None
    enter_reproducible_mode(reproducible, threads)
    raw["data"]["source"] = str(data.resolve())
    return raw


def ci(report: dict, key: str) -> str:
    low, high = report[key].get("low"), report[key].get("high")
    return f"[{low:.2f}, {high:.2f}]" if low is not None else ""


def run_recipe(data: Path, params: Params, threads: int) -> dict:
    cfg = dataclasses.replace(params.train, threads=threads)
    device = torch.device("cpu")
    configure(cfg, device)
    train_dir = data / f"augmented-{params.augment.target}" / "train"
    start = time.perf_counter()
    classes = index_folder(train_dir).classes
    model = build_model(cfg.model, len(classes), resolve_weights(cfg.model, cfg.weights))
    prep = Preprocessing.from_config(params.preprocess)
    train = cached_split(train_dir, cfg.image_size, classes, prep=prep)
    val = cached_split(data / "split" / "val", cfg.image_size, classes, prep=prep)
    result = fit(model, train, val, cfg, params.lr, device)
    model.load_state_dict(result.best_state)
    test = load_split(data / "split" / "test", cfg.image_size, classes, prep)
    logits = predict_logits(model, cfg.model, test.pixels, 64, device)
    probabilities = torch.softmax(logits, 1).numpy().astype(np.float64)
    minutes = (time.perf_counter() - start) / 60
    y_true = test.labels.numpy()
    report = classification_metrics(y_true, probabilities, classes, 1000, 0.95, 0)
    train_labels = np.array(index_folder(data / "split" / "train", classes).labels)
    report["baselines"] = baseline_report(y_true, probabilities, train_labels, classes, 1000)
    report["minutes"] = minutes
    report["best_epoch"] = result.best_epoch
    # what chose the recipe (optimistic: the kept epoch was picked on val too)
    report["val_balanced_accuracy"] = result.history[result.best_epoch - 1].val_balanced_accuracy
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a source folder (cxr3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", choices=sorted(EVERY), default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args()
    raw = project_params(args.data, args.threads)
    names = args.only or list(RECIPES)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-recipes-") as scratch:
        os.environ.setdefault("CXR_CACHE_DIR", str(Path(scratch) / "pixels"))
        data = prepare(args.data, Path(scratch), with_overrides(raw, RECIPE))
        targets = {with_overrides(raw, EVERY[n]).augment.target for n in names}
        for target in targets - {"none"}:
            augment_train(
                data / "split" / "train",
                data / f"augmented-{target}",
                with_overrides(raw, {"augment.target": target}).augment,
            )
        for name in names:
            for seed in args.seeds:
                params = with_overrides(raw, {**EVERY[name], "train.seed": seed})
                report = run_recipe(data, params, args.threads)
                verdict = report["baselines"]["model_minus_majority"]["verdict"]
                print(
                    f"{name:36s} seed {seed}: accuracy {report['accuracy']:.3f} "
                    f"{ci(report, 'accuracy_ci')}, balanced {report['balanced_accuracy']:.3f} "
                    f"{ci(report, 'balanced_accuracy_ci')}, macro-F1 {report['macro']['f1']:.3f} "
                    f"{ci(report, 'macro_f1_ci')}, {verdict} majority, best epoch "
                    f"{report['best_epoch']} (val balanced {report['val_balanced_accuracy']:.3f}),"
                    f" {report['minutes']:.1f} min",
                    flush=True,
                )
                results.setdefault(name, []).append(report)
    majority = next(iter(results.values()))[0]["baselines"]["majority"]
    print(
        f"\nmajority baseline (always {majority['class']}): accuracy {majority['accuracy']:.3f}, "
        f"balanced {majority['balanced_accuracy']:.3f}, macro-F1 {majority['macro_f1']:.3f}"
    )
    print("recipe | val balanced accuracy | test balanced accuracy (min–max) | minutes (means)")
    for name, reports in results.items():
        balanced = [r["balanced_accuracy"] for r in reports]
        val = statistics.mean(r["val_balanced_accuracy"] for r in reports)
        print(
            f"{name} | {val:.3f} | {statistics.mean(balanced):.3f} "
            f"({min(balanced):.3f}–{max(balanced):.3f})"
            f" | {statistics.mean(r['minutes'] for r in reports):.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
