"""Order-preserving parallel map over processes, for per-file work (decode, augment)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from cxr.core.progress import progress

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def ordered_map(
    fn: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    desc: str = "",
    unit: str = "images",
) -> list[Result]:
    """`list(map(fn, items))` over worker processes; results come back in input order.
    With `desc`, progress is shown as results arrive (cxr.core.progress).

    Outputs must not depend on the number of workers: callers derive every random seed from
    the item itself, never from a worker's position.
    """
    workers = default_workers() if workers is None else workers

    def shown(results: Any) -> Any:
        return progress(results, desc, len(items), unit) if desc else results

    if workers <= 1 or len(items) < 2 * workers:
        if initializer is not None:
            initializer(*initargs)
        return [fn(item) for item in shown(items)]
    chunksize = max(1, min(64, len(items) // (workers * 4)))
    with ProcessPoolExecutor(workers, initializer=initializer, initargs=initargs) as pool:
        return list(shown(pool.map(fn, items, chunksize=chunksize)))
