"""The pixel store under concurrency: two real processes writing the same entry (the DVC queue
runs experiments in parallel, and they share one store)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from cxr.training.cache import open_store, write_store

ROUNDS = 60


def pixels() -> np.ndarray:
    return np.arange(4 * 32 * 32, dtype=np.uint8).reshape(4, 1, 32, 32)


def _writer(directory: str, barrier, errors) -> None:
    """Write the same entry over and over, starting together with the other process."""
    try:
        barrier.wait(timeout=60)
        for _ in range(ROUNDS):
            stored = write_store("same-key", pixels(), Path(directory))
            assert np.array_equal(stored, pixels())
    except BaseException as err:  # reported to the test, which names it
        errors.put(f"{type(err).__name__}: {err}")
        raise


def test_two_processes_write_the_same_entry(tmp_path: Path) -> None:
    # issue 16, case 7: fixed scratch names made one writer delete or rename the other's
    # scratch file (FileNotFoundError).
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_writer, args=(str(tmp_path), barrier, errors)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert [worker.exitcode for worker in workers] == [0, 0], failures
    assert np.array_equal(open_store("same-key", tmp_path), pixels())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same-key.json", "same-key.u8"]
