"""Peak resident memory of a block of code, from /proc/self/status (Linux): the one helper the memory benchmarks share.

Two settings answer two questions:

* `PeakRSS()` (scoring_cost.py, calibration_scale.py): peak VmRSS. The kernel's high-water mark VmHWM is reset on
  entry (`/proc/self/clear_refs` = 5) and read on exit, so a peak is seen however short it is; VmRSS is also sampled
  every 5 ms, which is the whole measurement where clear_refs is not writable.
* `PeakRSS(fields=("VmRSS", "RssAnon"), interval_s=0.002, high_water_mark=False)` (offload_memory.py): VmRSS counts the
  file-backed pages of memory-mapped offload files that are still mapped, RssAnon only allocated (tensor) memory;
  the kernel keeps no high-water mark of RssAnon, so both are sampled, every 2 ms.

`peak_mib[field]` is each field's peak above its level at entry, in MiB; `method` says how the VmRSS peak was read.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kib(fields: Sequence[str]) -> dict[str, int]:
    """The named fields of /proc/self/status (kB), read in one go."""
    text = STATUS.read_text()
    return {field: int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1)) for field in fields}


class PeakRSS:
    """Peak of each of `fields` above its level at entry, sampled every `interval_s` by a thread; with
    `high_water_mark`, VmRSS's peak is also read from the kernel's VmHWM, reset on entry."""

    def __init__(
        self, fields: Sequence[str] = ("VmRSS",), interval_s: float = 0.005, high_water_mark: bool = True
    ) -> None:
        if not fields or len(set(fields)) != len(fields):
            raise ValueError(f"fields={fields!r} must name distinct /proc/self/status fields, e.g. ('VmRSS',).")
        if high_water_mark and "VmRSS" not in fields:
            raise ValueError("high_water_mark reads VmRSS's peak (VmHWM): include 'VmRSS' in fields.")
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s!r} must be positive.")
        self.fields = tuple(fields)
        self.interval_s = interval_s
        self.high_water_mark = high_water_mark

    def __enter__(self) -> PeakRSS:
        self.method = f"VmRSS sampled every {self.interval_s * 1000:g} ms"
        self._hwm = False
        if self.high_water_mark:
            try:
                CLEAR_REFS.write_text("5")
                self._hwm = True
                self.method = "VmHWM after clear_refs=5"
            except OSError:
                pass
        self.start = status_kib(self.fields)
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._update()

    def _update(self) -> None:
        now = status_kib(self.fields)
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        if self._hwm:
            self.peak["VmRSS"] = max(self.peak["VmRSS"], status_kib(("VmHWM",))["VmHWM"])
        self.peak_mib = {k: (self.peak[k] - self.start[k]) / 1024 for k in self.fields}
