"""Progress: a tqdm bar on a terminal, a plain line every few seconds in logs, one line per
epoch with what a person watches."""

from __future__ import annotations

import io
import os
import pty

import pytest

from cxr.core.progress import Stopwatch, epoch_line, progress


class Clock:
    """A clock that advances a fixed step per reading (the work's own pace, no sleeping)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_logs_get_a_line_per_interval_not_per_item():
    stream = io.StringIO()
    items = list(
        progress(
            range(100), "augment", unit="images", stream=stream, interval=10.0, clock=Clock(1.0)
        )
    )
    assert items == list(range(100))  # every item, in order
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # one per 10 s of a 100 s job
    assert lines[0] == "augment: 10/100 images (10%), 1.0 images/s, 90 s left"


def test_short_work_prints_nothing_in_logs():
    stream = io.StringIO()
    assert sum(progress(range(50), "fast", stream=stream, clock=Clock(0.01))) == sum(range(50))
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert terminal.isatty()
            assert list(progress(range(3), "epoch 1/4", stream=terminal)) == [0, 1, 2]
            terminal.flush()
        shown = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert "\repoch 1/4:" in shown and "0/3 [" in shown  # a bar, redrawn in place


def test_epoch_line_has_losses_accuracies_lr_speed_and_time():
    stats = {
        "epoch": 2,
        "train_loss": 0.35537,
        "train_accuracy": 0.8684,
        "val_loss": 0.60549,
        "val_accuracy": 0.8604,
        "val_balanced_accuracy": 0.8421,
        "val_macro_f1": 0.8891,
        "lr": 0.001,
        "images_per_second": 89.96,
    }
    assert epoch_line(stats, 4, 12.34) == (
        "epoch 2/4: train loss 0.3554 acc 0.868 | val loss 0.6055 acc 0.860 bal. acc 0.842 "
        "macro-F1 0.889 | lr 1.00e-03 | 90 images/s | 12.3 s"
    )
    del stats["val_balanced_accuracy"]  # fields a history lacks are left out, not invented
    assert "bal. acc" not in epoch_line(stats, 4, 1.0)


def test_stopwatch_adds_up_each_part_even_when_it_raises_and_totals_from_its_start():
    watch = Stopwatch(clock=Clock(1.0))  # started at 1
    with watch.part("maps"):  # 2 -> 3
        pass
    with pytest.raises(ValueError), watch.part("curves"):  # 4 -> 5
        raise ValueError
    with watch.part("maps"):  # 6 -> 7: added to the first
        pass
    watch.add("figures", 0.25)
    assert watch.parts == {"maps": 2.0, "curves": 1.0, "figures": 0.25}
    assert watch.line("gradcam time") == (
        "gradcam time: maps 2.0 s, curves 1.0 s, figures 0.2 s; total 7.0 s"  # 8 - 1
    )
