"""Stage-by-stage wall time and peak memory of a prediction (`kits_predict --profile`).

Code marks its stages with `with stage("name"):`, which does nothing unless a `Profile`
is active (`with profile.active():`). A stage that runs more than once (once per VOI)
adds up its seconds and keeps its highest peak. A stage's peak is the process's
resident-set high-water mark while it ran: Linux lets a process reset that mark
(/proc/self/clear_refs); where it cannot, peaks are left out.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")

_active: Profile | None = None


def peak_rss_bytes() -> int | None:
    """This process's resident-set high-water mark (VmHWM), None where /proc is absent."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class Profile:
    """Seconds and peak RSS (bytes, or None) per stage, in the order stages first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, int | None] = {}
        self.start_peak = peak_rss_bytes()  # imports and models, before the first stage

    @contextmanager
    def active(self) -> Iterator[Profile]:
        global _active
        previous, _active = _active, self
        try:
            yield self
        finally:
            _active = previous

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        resettable = _reset_peak()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            peak = peak_rss_bytes() if resettable else None
            known = [p for p in (self.peak.get(name), peak) if p is not None]
            self.peak[name] = max(known) if known else None

    @property
    def peak_rss(self) -> int | None:
        """The process's peak over the stages and what came before them."""
        known = [p for p in (self.start_peak, *self.peak.values()) if p is not None]
        return max(known) if known else None

    def to_dict(self) -> dict:
        return {"stages": [[name, round(s, 3), self.peak[name]] for name, s in self.seconds.items()],
                "peak_rss_bytes": self.peak_rss}

    def table(self) -> str:
        return format_table([(name, f"{s:.2f}", _gb(self.peak[name])) for name, s in self.seconds.items()]
                            + [("all stages", f"{sum(self.seconds.values()):.2f}", _gb(self.peak_rss))])


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def format_table(rows: list[tuple[str, str, str]], header=("stage", "seconds", "peak RSS GB")) -> str:
    """Rows of (stage, seconds, peak) as aligned text."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in table)


def stage(name: str):
    """Time `name` in the active profile (a no-op context without one)."""
    return _active.stage(name) if _active is not None else nullcontext()
