"""benchmarks/common.py PeakRSS: the memory benchmarks' peak-RSS helper sees a short-lived allocation either way."""

import mmap
import time
from pathlib import Path

import pytest
from common import PeakRSS

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc/self/status (Linux)")

BLOCK_MIB = 64


@pytest.mark.parametrize(
    "kwargs, fields",
    [
        ({}, ("VmRSS",)),  # scoring_cost.py, calibration_scale.py: kernel high-water mark (sampling where not allowed)
        ({"fields": ("VmRSS", "RssAnon"), "interval_s": 0.002, "high_water_mark": False}, ("VmRSS", "RssAnon")),
    ],
)
def test_peak_above_entry_level(kwargs, fields):
    with PeakRSS(**kwargs) as peak:
        # a fresh anonymous mapping, written so resident: whatever memory the allocator of this long-lived test
        # process keeps cached from earlier tests, these pages are new
        block = mmap.mmap(-1, BLOCK_MIB * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        block.write(b"\x01" * len(block))
        time.sleep(0.05)  # several sampling intervals
        block.close()
    assert tuple(peak.peak_mib) == fields
    for field in fields:
        assert BLOCK_MIB - 4 <= peak.peak_mib[field] < 8 * BLOCK_MIB, (field, peak.peak_mib, peak.method)
    assert peak.method.startswith("VmHWM" if kwargs == {} and peak._hwm else "VmRSS sampled every")


def test_bad_settings():
    with pytest.raises(ValueError, match="include 'VmRSS'"):
        PeakRSS(fields=("RssAnon",))
    with pytest.raises(ValueError, match="interval_s=0"):
        PeakRSS(interval_s=0)
    with pytest.raises(ValueError, match="distinct"):
        PeakRSS(fields=("VmRSS", "VmRSS"))
