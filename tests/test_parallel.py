"""map_cases: per-case errors, and a worker killed by the system (e.g. out of memory) named by its case."""
import os
import signal
from dataclasses import dataclass

import pytest

from kitsseg.errors import KitssegError
from kitsseg.parallel import map_cases


@dataclass(frozen=True)
class Case:
    case_id: str


def square_or_die(case: Case) -> int:
    """The 'killer' case dies as the kernel's OOM killer would end it: SIGKILL, no cleanup."""
    if case.case_id == "killer":
        os.kill(os.getpid(), signal.SIGKILL)
    if case.case_id == "bad":
        raise KitssegError("bad: unreadable")
    return int(case.case_id[1:]) ** 2


CASES = [Case("c1"), Case("c2"), Case("killer"), Case("c3"), Case("bad"), Case("c4"), Case("c5")]


@pytest.mark.parametrize("workers", [2, 3])
def test_a_killed_worker_fails_its_case_only(workers):
    with pytest.warns(UserWarning) as caught:
        results = map_cases(square_or_die, CASES, num_workers=workers, desc="preprocess", quiet=True)
    assert results == {"c1": 1, "c2": 4, "c3": 9, "c4": 16, "c5": 25}
    messages = [str(w.message) for w in caught]
    killed = [m for m in messages if "killed" in m]
    assert len(killed) == 1 and "case killer: the worker process was killed (most likely out of memory)" in killed[0]
    assert any("bad: unreadable; case skipped" in m for m in messages)


def test_a_killed_worker_stops_a_run_that_stops_on_errors():
    with pytest.raises(KitssegError, match="case killer: the worker process was killed"):
        map_cases(square_or_die, [Case("c1"), Case("killer"), Case("c2")], num_workers=2, quiet=True,
                  stop_on_error=True)
