"""Progress on long work: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

DVC runs stages with the user's terminal, so `dvc repro` in a shell gets live bars. Under a
pipe (CI, `dvc repro > log`, a queued experiment) a bar would be a stream of carriage returns,
so there a line such as `train epoch 2/4: 640/836 images (77%), 812 images/s, 1 s left` is
printed at most every `interval` seconds instead, and nothing at all for work that ends sooner.
Both go to stderr, like tqdm; results stay on stdout.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

# Seconds between plain progress lines when not on a terminal.
LOG_INTERVAL_S = 10.0


def progress(
    items: Iterable[T],
    desc: str,
    total: int | None = None,
    unit: str = "it",
    stream: TextIO | None = None,
    interval: float = LOG_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Yield `items`, showing progress on `stream` (default stderr) as described above."""
    stream = stream or sys.stderr
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    if _is_terminal(stream):
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, file=stream)
        return
    yield from _logged(items, desc, total, unit, stream, interval, clock)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _logged(
    items: Iterable[T],
    desc: str,
    total: int | None,
    unit: str,
    stream: TextIO,
    interval: float,
    clock: Callable[[], float],
) -> Iterator[T]:
    start = last = clock()
    for done, item in enumerate(items, start=1):
        yield item
        now = clock()
        if now - last >= interval:
            print(progress_line(desc, done, total, unit, now - start), file=stream, flush=True)
            last = now


def progress_line(desc: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
    """`desc: done/total unit (pct%), rate unit/s, N s left` (what is known of it)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if not total:
        return f"{desc}: {done} {unit}, {rate:.1f} {unit}/s"
    left = (total - done) / rate if rate > 0 else float("nan")
    return (
        f"{desc}: {done}/{total} {unit} ({100 * done / total:.0f}%), "
        f"{rate:.1f} {unit}/s, {left:.0f} s left"
    )


# The per-epoch line: (EpochStats field, label, format), printed in this order where present.
EPOCH_FIELDS = (
    ("train_loss", "train loss", "{:.4f}"),
    ("train_accuracy", "acc", "{:.3f}"),
    ("val_loss", "| val loss", "{:.4f}"),
    ("val_accuracy", "acc", "{:.3f}"),
    ("val_balanced_accuracy", "bal. acc", "{:.3f}"),
    ("val_macro_f1", "macro-F1", "{:.3f}"),
    ("lr", "| lr", "{:.2e}"),
    ("images_per_second", "|", "{:.0f} images/s"),
)


def epoch_line(stats: dict[str, float], epochs: int, seconds: float) -> str:
    """`epoch 2/4: train loss 0.3554 acc 0.868 | val loss 0.6055 acc 0.860 ... | 12.3 s`."""
    parts = [f"epoch {int(stats['epoch'])}/{epochs}:"]
    for key, label, fmt in EPOCH_FIELDS:
        if key in stats:
            parts.append(f"{label} {fmt.format(stats[key])}")
    parts.append(f"| {seconds:.1f} s")
    return " ".join(parts)


class Stopwatch:
    """The seconds each named part of a long piece of work took (a part entered again adds
    to its time), for the one line a stage prints when it ends: where its minutes went."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()
        self.parts: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time the block under `name`, whether it ends or raises."""
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` to the part `name` (timed elsewhere)."""
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def line(self, label: str) -> str:
        """`<label>: <part> 1.2 s, ...; total 3.4 s`, the total counted from the watch's start."""
        listed = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.parts.items())
        return f"{label}: {listed}; total {self.clock() - self.started:.1f} s"
