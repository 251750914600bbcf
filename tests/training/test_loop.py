"""Fine-tuning regimes, imbalance options and exact kill-and-resume of the train stage."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxr.core.errors import ConfigError
from cxr.training.loop import fit
from cxr.training.models import build_model
from cxr.training.optim import warmup_cosine
from cxr.training.state import SELECTION, EpochStats, FitResult, load_state
from tests.helpers.train_project import (
    make_project,
    run_train,
    stage_env,
    tiny_cfg,
    tiny_set,
    train_command,
)

CPU = torch.device("cpu")


def changed_keys(before: dict, model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    return {key for key, value in before.items() if not torch.equal(value, after[key])}


def test_head_only_regime_changes_only_head_weights() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, tiny_set(), tiny_set(6, seed=1), tiny_cfg(finetune="head"), 1e-2, CPU)
    assert changed_keys(before, model) == {"fc.weight", "fc.bias"}


def test_unfreeze_regime_trains_the_backbone_after_n_epochs() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = tiny_cfg(finetune="unfreeze", unfreeze_after=1, epochs=1)
    fit(model, tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, CPU)
    assert changed_keys(before, model) == {"fc.weight", "fc.bias"}
    model2 = build_model("resnet18", 3)
    model2.load_state_dict(before)
    fit(model2, tiny_set(), tiny_set(6, seed=1), tiny_cfg(finetune="unfreeze", epochs=2), 1e-2, CPU)
    assert "conv1.weight" in changed_keys(before, model2)


@pytest.mark.parametrize(
    "overrides",
    [
        {"imbalance": "weighted_loss", "label_smoothing": 0.1, "scheduler": "plateau"},
        {"imbalance": "sampler", "optimizer": "sgd", "scheduler": "cosine"},
    ],
)
def test_imbalance_and_scheduler_options_train(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model("squeezenet1_1", 3)
    result = fit(
        model,
        tiny_set(),
        tiny_set(6, seed=1),
        tiny_cfg(model="squeezenet1_1", epochs=2, **overrides),
        1e-3,
        CPU,
    )
    assert [s.epoch for s in result.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(s.train_loss)) for s in result.history)


def _outputs(root: Path) -> tuple[dict, pd.DataFrame, dict]:
    history = pd.read_csv(root / "plots/train_history.csv")
    weights = torch.load(root / "models/model.pt", weights_only=True)["state_dict"]
    return json.loads((root / "metrics/train.json").read_text()), history, weights


def _kill_after_first_epoch(root: Path) -> int:
    """Start the stage, SIGKILL it once a checkpoint exists; the epoch it had saved."""
    checkpoint = root / "models/checkpoint/last.pt"
    process = subprocess.Popen(
        train_command(),
        cwd=root,
        env=stage_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # polls a real condition (the checkpoint file) with a deadline
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert checkpoint.exists(), f"no checkpoint before the kill:\n{stderr}"
    return load_state(checkpoint, load_state_key(checkpoint)).epoch


def load_state_key(path: Path) -> str:
    return torch.load(path, map_location="cpu", weights_only=True)["key"]


@pytest.mark.e2e  # runs a stage for real (README: the slow part)
def test_killed_training_resumes_to_the_same_result(tmp_path: Path) -> None:
    train = {"epochs": 4}  # the default recipe: pretrained lite0, per-step warm-up + cosine
    straight = make_project(tmp_path / "straight", per_class=4, **train)
    killed = make_project(tmp_path / "killed", per_class=4, **train)
    run_train(straight)
    saved_epoch = _kill_after_first_epoch(killed)
    assert 1 <= saved_epoch < 4, "the kill came after training had finished"
    assert not (killed / "models/model.pt").exists()
    log = run_train(killed)
    assert f"resuming after epoch {saved_epoch}" in log
    metrics, history, weights = _outputs(killed)
    expected_metrics, expected_history, expected_weights = _outputs(straight)
    assert metrics == expected_metrics
    pd.testing.assert_frame_equal(history, expected_history)
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)


@pytest.mark.e2e  # runs a stage for real (README: the slow part)
def test_checkpoint_of_other_params_is_not_resumed(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", per_class=2, epochs=2)
    _kill_after_first_epoch(root)  # leaves the resume state of lr 0.0005
    params = (root / "params.yaml").read_text().replace("lr: 0.0005", "lr: 0.002")
    (root / "params.yaml").write_text(params)
    log = run_train(root)
    assert "resuming" not in log
    assert "starting fresh" in log


def stats(epoch: int, val_loss: float, balanced: float, f1: float = 0.5) -> EpochStats:
    return EpochStats(epoch, 0.1, 0.9, val_loss, 0.8, balanced, f1, 1e-3, 10.0)


def test_selection_rules_pick_their_epoch_and_break_ties_by_val_loss() -> None:
    history = [
        stats(1, 0.50, 0.60),
        stats(2, 0.40, 0.70),
        stats(3, 0.30, 0.70),
        stats(4, 0.20, 0.50),
    ]

    def best(rule: str) -> int:
        return max(history, key=SELECTION[rule]).epoch

    assert best("val_loss") == 4
    assert best("val_balanced_accuracy") == 3  # 2 and 3 tie at 0.70: the lower val loss wins
    assert best("last") == 4


def test_warmup_cosine_rises_linearly_then_decays_to_zero() -> None:
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    after = [factor(s) for s in range(10, 101)]
    assert after[0] == pytest.approx(1.0) and after[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(after))  # never rises again
    assert factor(55) == pytest.approx(0.5)  # half way through the decay


def test_cosine_schedule_steps_per_batch_and_history_records_it() -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(epochs=3, scheduler="cosine", warmup_epochs=1, batch_size=4)
    result = fit(build_model("resnet18", 3), tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, CPU)
    lrs = [s.lr for s in result.history]
    steps = 3  # 12 images in batches of 4
    factor = warmup_cosine(3 * steps, steps)
    # the lr of each epoch's last optimizer step
    assert lrs == pytest.approx([1e-2 * factor(e * steps - 1) for e in (1, 2, 3)])
    assert lrs[0] == pytest.approx(1e-2)  # warm-up ends at the peak, not below it


def test_head_training_on_cached_features_equals_the_loop() -> None:
    """Frozen backbone, no random augmentation: training the head on features computed once
    gives the same head as running the backbone every step."""
    from cxr.core.config import BatchAugmentConfig

    cfg = tiny_cfg(epochs=3, finetune="head", batch_augment=BatchAugmentConfig(enabled=False))
    heads = []
    for cached in (True, False):
        torch.manual_seed(0)
        model = build_model("resnet18", 3)
        result = fit(model, tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, CPU, feature_cache=cached)
        heads.append((model.fc.weight.detach().clone(), [s.val_loss for s in result.history]))
    (w_cached, loss_cached), (w_loop, loss_loop) = heads
    assert torch.allclose(w_cached, w_loop, atol=1e-5)
    assert loss_cached == pytest.approx(loss_loop, abs=1e-5)


def test_epoch_that_sees_no_image_fails_naming_epoch_and_batch_size() -> None:
    # issue 16, case 2: batches of one image are skipped (BatchNorm); an epoch made only of
    # them used to "train" with loss 0.0 and save an untrained model.
    model = build_model("resnet18", 3)
    with pytest.raises(ConfigError, match=r"epoch 1 trained on no images.*train\.batch_size"):
        fit(model, tiny_set(1), tiny_set(6, seed=1), tiny_cfg(), 1e-3, CPU)


def test_non_finite_loss_fails_naming_epoch_and_lr() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    with pytest.raises(ConfigError, match=r"epoch 1: the training loss became nan.*Lower lr"):
        fit(model, tiny_set(), tiny_set(6, seed=1), tiny_cfg(), float("inf"), CPU)


def test_top_regime_trains_only_the_last_stages_and_head() -> None:
    """finetune: top on cached inputs: the stages before the last top_blocks never change, the
    last ones and the head do."""
    from cxr.core.config import BatchAugmentConfig

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = tiny_cfg(
        model="efficientnet_lite0",
        finetune="top",
        top_blocks=2,
        batch_augment=BatchAugmentConfig(enabled=False),
    )
    fit(model, tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, CPU)
    changed = {
        key.split(".")[0] + ("." + key.split(".")[1] if key.startswith("blocks") else "")
        for key in changed_keys(before, model)
    }
    assert changed == {"blocks.5", "blocks.6", "conv_head", "bn2", "classifier"}


def test_top_tail_on_cached_input_equals_the_whole_model() -> None:
    """What the top stages compute from the cached input is what the whole model computes from
    the pixels: the split point loses nothing."""
    from cxr.core.config import BatchAugmentConfig
    from cxr.training.inference import predict_logits
    from cxr.training.loop import cached_part, module_inputs

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3).eval()
    pixels = tiny_set(6, size=64).pixels
    cfg = tiny_cfg(
        model="efficientnet_lite0",
        finetune="top",
        top_blocks=3,
        batch_augment=BatchAugmentConfig(enabled=False),
    )
    path, tail = cached_part(model, cfg)
    assert path == "blocks.4"
    cached = module_inputs(model, cfg.model, path, pixels, 4, CPU)
    with torch.no_grad():
        through_tail = tail.eval()(cached)
    whole = predict_logits(model, cfg.model, pixels, 4, CPU)
    assert torch.allclose(through_tail, whole, atol=1e-4)


def test_top_regime_refuses_too_many_blocks() -> None:
    from cxr.core.config import BatchAugmentConfig

    model = build_model("efficientnet_lite0", 3)
    cfg = tiny_cfg(
        model="efficientnet_lite0",
        finetune="top",
        top_blocks=9,
        batch_augment=BatchAugmentConfig(enabled=False),
    )
    with pytest.raises(ConfigError, match=r"train\.top_blocks: 9.*7 stages"):
        fit(model, tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, CPU)


def _write_metadata(root: Path, column: str) -> None:
    """data/metadata.csv naming a hospital for each training image (COVID from one, the other
    classes from another), and the augment stage's manifest with one augmented copy."""
    train = root / "data/augmented/train"
    original = next((train / "COVID").iterdir())
    copy = original.with_name(f"{original.stem}__aug0000.png")
    copy.write_bytes(original.read_bytes())
    keys = [f"{p.parent.name}/{p.name}" for p in sorted(train.glob("*/*.png")) if p != copy]
    hospital = ["covid-ward" if key.startswith("COVID/") else "clinic" for key in keys]
    pd.DataFrame({"file": keys, column: hospital}).to_csv(root / "data/metadata.csv", index=False)
    rows = [{"file": key, "source": key} for key in keys]
    rows.append({"file": f"COVID/{copy.name}", "source": f"COVID/{original.name}"})
    manifest = pd.DataFrame(rows).assign(**{"class": "", "augmented": "", "seed": ""})
    manifest.to_csv(root / "data/augmented/manifest.csv", index=False)


@pytest.mark.e2e  # runs a stage for real
def test_train_stage_draws_balanced_by_a_metadata_column(tmp_path: Path) -> None:
    root = make_project(tmp_path / "ok", imbalance="sampler", balance_by="source", epochs=1)
    _write_metadata(root, "source")
    run_train(root)
    assert (root / "models/model.pt").is_file()
    assert json.loads((root / "metrics/train.json").read_text())["train_images"] == 25


@pytest.mark.e2e
def test_train_stage_names_a_balance_column_the_metadata_lacks(tmp_path: Path) -> None:
    root = make_project(tmp_path / "bad", imbalance="sampler", balance_by="hospital", epochs=1)
    _write_metadata(root, "source")
    done = subprocess.run(
        train_command(), cwd=root, env=stage_env(root), capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "train.balance_by: 'hospital'" in done.stderr and "columns: source" in done.stderr
    assert not (root / "models").exists()  # stopped before training wrote anything
    assert not (root / ".cxr_cache").exists()  # ... and before decoding any image


class _Interrupted(Exception):
    """Raised from `on_epoch`, after the epoch's state was saved: a run stopped between
    epochs."""


def _trained_weights_per_step(cfg, checkpoint: Path) -> list[dict[str, torch.Tensor]]:
    """The trained weights after each epoch, read back from the state saved after it."""
    seen: list[dict[str, torch.Tensor]] = []

    def read(stats: EpochStats) -> None:
        seen.append(load_state(checkpoint, load_state_key(checkpoint)).model)

    torch.manual_seed(0)
    fit(
        build_model("resnet18", 3),
        tiny_set(),
        tiny_set(6, seed=1),
        cfg,
        1e-2,
        CPU,
        read,
        checkpoint,
    )
    return seen


def test_ema_keeps_the_moving_average_of_every_step_and_scores_it(tmp_path: Path) -> None:
    """train.ema_decay: the kept weights are the exponential moving average of the trained
    weights after every optimizer step (one step per epoch here, so each epoch's saved state is
    one step), the training itself is unchanged, and validation scores the average."""
    from cxr.training.inference import predict_logits

    decay = 0.6
    plain = tiny_cfg(epochs=3, batch_size=12, select_by="last")  # 12 images: one step an epoch
    steps = _trained_weights_per_step(plain, tmp_path / "plain.pt")
    averaged = tiny_cfg(epochs=3, batch_size=12, select_by="last", ema_decay=decay)
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    val = tiny_set(6, seed=1)
    result = fit(model, tiny_set(), val, averaged, 1e-2, CPU, checkpoint=tmp_path / "ema.pt")
    # the trained weights follow the same path with or without the average
    trained = load_state(tmp_path / "ema.pt", load_state_key(tmp_path / "ema.pt")).model
    assert all(torch.equal(trained[k], steps[-1][k]) for k in steps[-1])
    expected = {k: v.clone() for k, v in steps[0].items() if v.is_floating_point()}
    for weights in steps[1:]:
        for key in expected:
            expected[key] = decay * expected[key] + (1 - decay) * weights[key]
    kept = result.best_state
    assert all(torch.allclose(kept[k], expected[k], atol=1e-6) for k in expected)
    assert not torch.allclose(kept["fc.weight"], steps[-1]["fc.weight"])  # not the last step
    model.load_state_dict(kept)
    with torch.no_grad():
        logits = predict_logits(model.eval(), "resnet18", val.pixels, 4, CPU)
    loss = float(torch.nn.functional.cross_entropy(logits, val.labels))
    assert result.history[-1].val_loss == pytest.approx(loss, abs=1e-5)


def test_ema_run_stopped_between_epochs_resumes_to_the_same_result(tmp_path: Path) -> None:
    """The moving average is part of the saved state: a resumed run ends where a straight one
    does, the average included."""
    cfg = tiny_cfg(epochs=2, ema_decay=0.7)

    def run(checkpoint: Path, stop_after: int | None = None):
        def on_epoch(stats: EpochStats) -> None:
            if stats.epoch == stop_after:
                raise _Interrupted

        torch.manual_seed(0)
        model = build_model("resnet18", 3)
        return fit(
            model, tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, CPU, on_epoch, checkpoint, "k"
        )

    straight = run(tmp_path / "straight.pt")
    with pytest.raises(_Interrupted):
        run(tmp_path / "resumed.pt", stop_after=1)
    resumed = run(tmp_path / "resumed.pt")
    assert resumed.resumed_from == 1

    def scores(result) -> list[dict]:  # all but the wall-clock speed
        return [{**s.as_dict(), "images_per_second": 0} for s in result.history]

    assert scores(resumed) == scores(straight)
    assert resumed.best_epoch == straight.best_epoch
    assert all(torch.equal(resumed.best_state[k], v) for k, v in straight.best_state.items())


def _first_training_step(cfg, runs: str) -> tuple[torch.Tensor, torch.Tensor, FitResult]:
    """What the module `runs` (the model's, "" for the whole model) and the loss received in
    the first training step (inputs, targets), and the run's result."""
    seen: dict[str, torch.Tensor] = {}

    def record(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.CrossEntropyLoss):
            seen.setdefault("targets", args[1].detach())

    def keep_input(module: torch.nn.Module, args: tuple) -> None:
        if module.training:  # a training step, not validation
            seen.setdefault("inputs", args[0].detach())

    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    model.get_submodule(runs).register_forward_pre_hook(keep_input)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = fit(model, tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, CPU)
    finally:
        handle.remove()
    return seen["inputs"], seen["targets"], result


@pytest.mark.parametrize(
    ("regime", "runs"),
    [
        ({}, ""),  # the whole network on (jittered) images
        ({"finetune": "head", "batch_augment": {"enabled": False}}, "fc"),  # cached vectors
    ],
    ids=["full", "head_cached"],
)
def test_mixup_blends_each_batch_with_its_neighbour_and_validates_unmixed(
    regime: dict, runs: str
) -> None:
    """train.mixup_alpha: the model trains on lam * x + (1 - lam) * (x shifted by one image),
    one lam per batch, against the one-hot labels blended by the same lam and pairs; the draws
    are seeded (two runs, the same weights) and validation scores the images unmixed."""
    from cxr.training.inference import predict_logits

    one_step = {"epochs": 1, "batch_size": 12, "select_by": "last", "label_smoothing": 0.1}
    plain_x, labels, _ = _first_training_step(tiny_cfg(**one_step, **regime), runs)
    mixed = tiny_cfg(**one_step, **regime, mixup_alpha=0.4)
    mixed_x, targets, result = _first_training_step(mixed, runs)
    shifted = plain_x.roll(1, 0)
    away = plain_x - shifted
    lam = float(((mixed_x - shifted) * away).sum() / (away * away).sum())
    assert 0.0 < lam < 1.0
    assert torch.allclose(mixed_x, lam * plain_x + (1 - lam) * shifted, atol=1e-5)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert torch.allclose(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0), atol=1e-5)
    again = _first_training_step(mixed, runs)[2]
    assert all(torch.equal(again.best_state[k], v) for k, v in result.best_state.items())
    model = build_model("resnet18", 3)
    model.load_state_dict(result.best_state)
    val = tiny_set(6, seed=1)
    with torch.no_grad():
        logits = predict_logits(model.eval(), "resnet18", val.pixels, 4, CPU)
    loss = float(torch.nn.functional.cross_entropy(logits, val.labels))
    assert result.history[-1].val_loss == pytest.approx(loss, abs=1e-5)
