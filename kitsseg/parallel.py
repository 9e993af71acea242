"""Run a function over cases in worker processes, with a progress bar and per-case errors."""
from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

from tqdm import tqdm

from kitsseg.errors import KitssegError, use_one_line_warnings


def map_cases(function: Callable, cases: Sequence, num_workers: int = 1, desc: str = "",
              quiet: bool = False, stop_on_error: bool = False) -> dict[str, object]:
    """Apply `function(case)` to every case; return {case_id: result} for those that succeeded.

    A `KitssegError` in one case is re-raised at once when `stop_on_error`, otherwise
    reported as a warning (one line naming the case) while the others go on. A worker
    killed by the system (e.g. out of memory) is a failure of the case it was working on:
    the cases in flight are rerun one process at a time to find it.
    """
    results: dict[str, object] = {}
    progress = tqdm(total=len(cases), desc=desc, disable=quiet, unit="case")

    def record(case, outcome: Callable[[], object]) -> None:
        try:
            results[case.case_id] = outcome()
        except KitssegError as exc:
            if stop_on_error:
                raise
            warnings.warn(f"{desc}: {exc}; case skipped")
        progress.set_postfix_str(case.case_id)
        progress.update()

    try:
        if num_workers <= 1:
            for case in cases:
                record(case, lambda: function(case))
        else:
            _map_in_pools(function, list(cases), num_workers, record)
    finally:
        progress.close()
    return results


def _map_in_pools(function: Callable, pending: list, num_workers: int, record: Callable) -> None:
    """Run every case in process pools; after a pool breaks, isolate the cases it had in flight."""
    isolate = 0  # how many leading pending cases run alone, one process each
    while pending:
        batch = pending[:isolate] if isolate else pending
        unfinished = _pool_map(function, batch, 1 if isolate else num_workers, record)
        later = pending[len(batch):]
        if not unfinished:
            pending, isolate = later, 0
        elif isolate:  # one process, one case in flight: that case killed it
            culprit = unfinished[0]
            record(culprit, lambda: _raise_killed(culprit))
            pending, isolate = unfinished[1:] + later, len(unfinished) - 1
        else:
            pending, isolate = unfinished + later, min(len(unfinished), num_workers + 1)


def _raise_killed(case) -> None:
    raise KitssegError(f"case {case.case_id}: the worker process was killed (most likely out of memory); "
                       "rerun with fewer workers (-np) or a lower --memory-gb")


def _pool_map(function: Callable, cases: list, num_workers: int, record: Callable) -> list:
    """Record each case's outcome; return the cases left unfinished when a worker died (in order)."""
    context = multiprocessing.get_context("spawn")
    unfinished = []
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=use_one_line_warnings) as pool:
        futures = {pool.submit(function, case): case for case in cases}
        try:
            for future in as_completed(futures):
                if isinstance(future.exception(), BrokenProcessPool):
                    unfinished.append(futures[future])
                else:
                    record(futures[future], future.result)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    order = {id(case): i for i, case in enumerate(cases)}
    return sorted(unfinished, key=lambda case: order[id(case)])
