"""Shared benchmark helpers: wall time and peak memory summed over a command's whole process tree.

Memory is sampled every 50 ms as two sums over the tree: RSS (resident pages; a page that several
processes share, such as a forked worker's copy of its parent, counts once per process) and PSS
(proportional set size from /proc/PID/smaps_rollup: a shared page counts 1/N in each of its N
processes, so the sum is the memory the tree really holds). Report PSS, with RSS beside it.
"""
from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

SHARED = Path(os.environ.get("KITSSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))  # ../shared
RENDER_SCRIPT = SHARED / "bench" / "render_ct.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class TreeMeasurement(NamedTuple):
    seconds: float
    peak_pss_bytes: int  # sampled peak of the PSS summed over the process tree
    peak_rss_bytes: int  # sampled peak of the RSS summed over the process tree (shared pages counted per process)
    exit_code: int


def _tree_pids(root_pid: int) -> list[int]:
    """The process and all its descendants, alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    pids, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def _pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def tree_memory_bytes(root_pid: int) -> tuple[int, int]:
    """(PSS, RSS) summed over a process and its descendants (a process that ends meanwhile counts 0)."""
    pss = rss = 0
    for pid in _tree_pids(root_pid):
        try:
            pss, rss = pss + _pss_bytes(pid), rss + _rss_bytes(pid)
        except (OSError, IndexError, ValueError):
            continue
    return pss, rss


def run_measured_tree(command: list[str], env: dict | None = None, log: Path | None = None) -> TreeMeasurement:
    """Run a command; return its wall seconds, the peaks of the PSS and RSS summed over its process
    tree, and its exit code."""
    peak_pss = peak_rss = 0
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_pss, peak_rss
        while not done.is_set():
            pss, rss = tree_memory_bytes(process.pid)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if log:
        out.close()
    return TreeMeasurement(seconds, peak_pss, peak_rss, code)


def run_measured(command: list[str], env: dict | None = None, log: Path | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS summed over the process tree, exit code): the older form, RSS only; use
    `run_measured_tree` to report PSS beside it."""
    measured = run_measured_tree(command, env, log)
    return measured.seconds, measured.peak_rss_bytes, measured.exit_code


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def git_commit() -> str:
    """The repository's short commit, with '+changes' when the work tree differs from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_description() -> str:
    model = ""
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    return f"{platform.node()}: {os.cpu_count()} cores ({model or platform.processor()}), {memory_gb:.0f} GB RAM"


def rendered_kits_source(workdir: Path, name: str, cases: list[str]) -> tuple[Path, Path]:
    """Render the cases not rendered yet (workdir/rendered_kits19, shared between benchmarks) with
    ../shared/bench/render_ct.py, and link them as a KiTS-layout folder workdir/name.
    Returns (rendered folder, KiTS-layout folder)."""
    rendered = workdir / "rendered_kits19"
    missing = [c for c in cases if not (rendered / c / "imaging.nii.gz").exists()]
    if missing:
        subprocess.run(["python", str(RENDER_SCRIPT), str(SHARED / "data" / "kits19"), str(rendered),
                        "--cases", *missing], check=True)
    source = workdir / name
    source.mkdir(parents=True, exist_ok=True)
    for case in cases:
        if not (source / case).exists():
            (source / case).symlink_to((rendered / case).resolve())
    return rendered, source
