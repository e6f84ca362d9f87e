"""One process pool for the per-image work of ``cxrseg prepare`` and of the mask indexer, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
import time
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

    A kill of this process (even ``kill -9``) leaves no worker running: the forkserver exits when its last client
    goes, which is once every worker has ended, and each worker ends when this process does (:func:`die_with`);
    the resource tracker exits once they have.
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
        pool = ProcessPoolExecutor(
            max_workers=num_proc, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
        )
        try:
            for result in pool.map(function, items, chunksize=chunksize):
                yield result
                progress.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def die_with(pid: int) -> None:
    """End this process (``os._exit``) as soon as process ``pid`` ends, however it ends (``kill -9`` included): a
    daemon thread waits on a pidfd of ``pid`` (Linux 5.3+), or polls ``pid`` every second elsewhere.

    A pool worker needs it because nothing else ends it when the main process is killed: it is the forkserver's
    child, not the main process's (a parent-death signal would wait for the forkserver), and it holds the write
    ends of the pool's own pipes (so it never sees them close) and of the forkserver's (so that one never exits)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd here: poll
        pidfd = None
    if pidfd is None and not _is_alive(pid):
        os._exit(1)

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the process has ended
        else:
            while _is_alive(pid):
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name=f"die-with-{pid}", daemon=True).start()


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _init_worker(main_pid: int) -> None:
    die_with(main_pid)
    cv2.setNumThreads(1)
