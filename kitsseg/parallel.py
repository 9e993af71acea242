"""Run a function over cases in worker processes, with a progress bar and per-case errors."""
from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

from tqdm import tqdm

from kitsseg.errors import KitssegError, use_one_line_warnings


def map_cases(function: Callable, cases: Sequence, num_workers: int = 1, desc: str = "",
              quiet: bool = False, stop_on_error: bool = False) -> dict[str, object]:
    """Apply `function(case)` to every case; return {case_id: result} for those that succeeded.

    A `KitssegError` in one case is re-raised at once when `stop_on_error`, otherwise
    reported as a warning (one line naming the case) while the others go on.
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
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(num_workers, mp_context=context,
                                     initializer=use_one_line_warnings) as pool:
                futures = {pool.submit(function, case): case for case in cases}
                try:
                    for future in as_completed(futures):
                        record(futures[future], future.result)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        progress.close()
    return results
