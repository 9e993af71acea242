"""benchmarks/measure.py: memory summed over a process tree, PSS beside RSS, against known sizes."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from measure import run_measured_tree  # noqa: E402

MB = 2 ** 20
# a parent touches 200 MB, forks, and both hold it: the pages are shared between two processes
FORKED = """
import os, time
block = bytearray(200 * 2 ** 20)
block[::4096] = b"x" * len(block[::4096])
pid = os.fork()
time.sleep(1.5)
if pid:
    os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's smaps_rollup")
def test_shared_pages_count_once_in_pss_and_per_process_in_rss():
    measured = run_measured_tree([sys.executable, "-c", FORKED])
    assert measured.exit_code == 0 and measured.seconds >= 1.5
    runtime = 60 * MB  # two Python interpreters' own pages, generously
    assert 400 * MB <= measured.peak_rss_bytes <= 400 * MB + runtime  # the block counted in both processes
    assert 200 * MB <= measured.peak_pss_bytes <= 200 * MB + runtime  # once, split between them
