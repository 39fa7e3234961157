"""Interrupted writes: a SIGKILL at any file-system step of save / recover / GGUF export never leaves a partial result.

The work runs in `kill_harness.py` subprocesses (two at once): each forks one child per kill point, kills it there
with SIGKILL, and records what the final name holds and what the next run does.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent / "kill_harness.py"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill harness forks")


@pytest.fixture(scope="module")
def kills(tmp_path_factory):
    """{case: report} for every case; the two harness processes run side by side."""
    root = tmp_path_factory.mktemp("kills")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    groups = [["save", "save+fallback", "save+fresh", "gguf"], ["recover+lean", "adapter+lean"]]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HARNESS), str(root / f"g{i}"), *cases, "--interior", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, cases in enumerate(groups)
    ]
    reports = {}
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        reports.update(json.loads(out.strip().splitlines()[-1]))
    return reports


def _check_case(report, fresh=False):
    assert report["points"], report
    for point in report["points"]:
        where = f"kill before step {point['k']} of {report['total_events']}: {point}"
        assert point["killed"], where
        allowed = {"missing", "new"} if fresh else {"previous", "new"}
        # the final name holds the previous state or the complete new one (never "other": a partial directory)
        assert point["after_kill"] in allowed | {"missing"}, where
        assert point["after_restore"] in allowed, where
        # the next run is not blocked, writes the complete result and leaves no hidden sibling behind
        assert point["next_error"] is None, where
        assert point["after_next"] == "new", where
        assert point["leftovers_after_next"] == [], where
        for name in point["leftovers"]:  # each leftover was cleaned (or restored) with a log line naming it
            assert any(name in line and ("Removed" in line or "Restored" in line) for line in point["log"]), where
    return [p["after_kill"] for p in report["points"]]


def test_killed_save_leaves_previous_or_complete_checkpoint(kills):
    states = _check_case(kills["save"])
    assert "missing" not in states  # the directory swap is one step: the name is never absent
    assert states[0] == "previous" and states[-1] == "new"  # kills fell before and after the swap


def test_killed_save_between_the_two_renames_restores_the_previous_checkpoint(kills):
    report = kills["save+fallback"]
    _check_case(report)
    between = [p for p in report["points"] if p["after_kill"] == "missing"]
    assert between, "no kill point fell between the two renames"
    for point in between:
        assert point["after_restore"] == "previous"
        assert any(line.startswith("Restored") for line in point["log"])


def test_killed_first_save_leaves_nothing_under_the_final_name(kills):
    states = _check_case(kills["save+fresh"], fresh=True)
    assert set(states) <= {"missing"} | {"new"} and "missing" in states


def test_killed_gguf_export_leaves_previous_file(kills):
    report = kills["gguf"]
    _check_case(report)
    assert report["total_events"] > 10  # the kills include points in the middle of the tensor data


@pytest.mark.parametrize("case", ["recover+lean", "adapter+lean"])
def test_killed_recover_leaves_previous_or_complete_checkpoint(kills, case):
    """recover(save_dir=...): the merged model with its adapter checkpoint, or (merge=False) the adapter checkpoint."""
    report = kills[case]
    states = _check_case(report)
    assert states[0] == "previous" and states[-1] == "new"
    # the recovery's own staging directory (the adapter checkpoint being built) is a leftover too, and is cleaned
    assert any(any(".tmp-" in name for name in p["leftovers"]) for p in report["points"][1:])
