"""One process pool for the per-image work of ``cxrseg prepare`` and of the mask indexer, with a progress bar."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import cv2
from tqdm.auto import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")


def parallel_map(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    num_proc: int,
    desc: str,
    show_progress: bool = True,
) -> Iterator[Result]:
    """``function(item)`` for every item, yielded in the order of ``items``, with a tqdm progress bar (``desc``).

    ``num_proc`` <= 1 (or a single item) runs in this process; otherwise in a pool of ``num_proc`` processes
    started with forkserver (spawn where there is none), never fork: forking a parent whose OpenCV, BLAS or torch
    threads are running can deadlock the child. Workers run OpenCV single-threaded (one process per core already)
    and the forkserver imports ``function``'s module once, not in every worker. ``function`` must be picklable: a
    module-level function or a ``functools.partial`` of one. An exception in ``function`` is raised here; the
    items not yet started are then cancelled.
    """
    with tqdm(total=len(items), desc=desc, unit="img", disable=not show_progress) as progress:
        if num_proc <= 1 or len(items) <= 1:
            for item in items:
                yield function(item)
                progress.update()
            return
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload([getattr(function, "func", function).__module__])
        chunksize = max(1, min(16, len(items) // (4 * num_proc)))
        pool = ProcessPoolExecutor(max_workers=num_proc, mp_context=context, initializer=_init_worker)
        try:
            for result in pool.map(function, items, chunksize=chunksize):
                yield result
                progress.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _init_worker() -> None:
    cv2.setNumThreads(1)
