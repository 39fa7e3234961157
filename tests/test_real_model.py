"""benchmarks/real_model.py end to end on a tiny chat model (the real model is never needed here)."""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import chat_benchmark_workspace  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import real_model  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny chat model directory and GSM8K-style jsonl files."""
    return chat_benchmark_workspace(tmp_path_factory.mktemp("real_model"))


def run_grid(workspace, tmp_path, *extra) -> dict:
    argv = [
        *("--model", str(workspace / "model"), "--data-dir", str(workspace / "gsm8k")),
        *("--methods", "magnitude", "wanda", "--sparsities", "0.2", "0.4", "--allocations", "global"),
        *("--num-calibration", "2", "--generation-tokens", "4", "--nll-problems", "4", "--em-problems", "3"),
        *("--em-tokens", "6", "--em-batch-size", "2", "--threads", "1"),
        *("--output", str(tmp_path / "out" / "grid"), "--cache-dir", str(tmp_path / "cache")),
        *extra,
    ]
    assert real_model.main(argv) == 0
    return json.loads((tmp_path / "out" / "grid.json").read_text())


def test_resume_adds_exact_match_to_rows_that_lack_it(workspace, tmp_path):
    """A grid can run its cheap metrics first and exact match later: resumed rows keep their metrics and get exact
    match, the plan is checked to be the same, and the record keeps every invocation's wall time."""
    torch.set_num_threads(1)
    first = run_grid(workspace, tmp_path, "--em-sparsities")  # no row gets exact match
    assert first["complete"] and [r["method"] for r in first["rows"]] == ["dense", *["magnitude"] * 2, *["wanda"] * 2]
    assert "exact_match" in first["rows"][0] and all("exact_match" not in r for r in first["rows"][1:])
    assert len(first["runs"]) == 1 and first["wall_time_total_s"] == first["wall_time_s"]

    second = run_grid(workspace, tmp_path, "--em-sparsities", "0.4", "--resume")
    by_key = {tuple(r["key"]): r for r in second["rows"]}
    for row in first["rows"]:
        again = by_key[tuple(row["key"])]
        assert {k: again[k] for k in row} == row  # nothing measured before changed
        if row.get("sparsity") == 0.4:
            assert 0.0 <= again["exact_match_flexible"] <= 1.0 and again["em_time_s"] >= 0
        elif row["method"] != "dense":
            assert "exact_match" not in again
    assert [run["command"] for run in second["runs"]] == [first["command"], second["command"]]
    assert second["wall_time_total_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"], abs=0.11)

    third = run_grid(workspace, tmp_path, "--resume")  # every row now: only the 0.2 rows are pruned again
    assert all("exact_match" in r for r in third["rows"]) and len(third["runs"]) == 3


def test_resume_refuses_a_row_that_prunes_differently(workspace, tmp_path):
    run_grid(workspace, tmp_path, "--em-sparsities")
    path = tmp_path / "out" / "grid.json"
    record = json.loads(path.read_text())
    record["rows"][1]["params"] += 1
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="another shape"):
        run_grid(workspace, tmp_path, "--resume")
