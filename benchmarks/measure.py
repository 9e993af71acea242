"""Shared benchmark helpers: wall time and peak RSS summed over a command's whole process tree."""
from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from pathlib import Path

SHARED = Path(os.environ.get("KITSSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))  # ../shared
RENDER_SCRIPT = SHARED / "bench" / "render_ct.py"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _tree_rss_bytes(root_pid: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(command: list[str], env: dict | None = None, log: Path | None = None) -> tuple[float, int, int]:
    """Run a command; return (wall seconds, peak RSS summed over its process tree, exit code)."""
    peak = 0
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if log:
        out.close()
    return seconds, peak, code


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
