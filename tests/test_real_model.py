"""benchmarks/real_model.py end to end on a tiny chat model (the real model is never needed here)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import real_model  # noqa: E402
import torch  # noqa: E402
from conftest import chat_benchmark_workspace  # noqa: E402


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

    narrower = run_grid(workspace, tmp_path, "--sparsities", "0.4", "--resume")  # a grid without the 0.2 rows ...
    assert {tuple(r["key"]) for r in narrower["rows"]} == {tuple(r["key"]) for r in third["rows"]}  # ... keeps them


def test_resume_measures_again_a_row_that_prunes_differently(workspace, tmp_path):
    """A resumed row whose plan no longer matches (scores recomputed elsewhere can move a borderline unit) is not
    mixed with new exact match: the whole row is measured again."""
    run_grid(workspace, tmp_path, "--em-sparsities")
    path = tmp_path / "out" / "grid.json"
    record = json.loads(path.read_text())
    record["rows"][1]["params"] += 1
    record["rows"][1]["nll"] = -1.0
    path.write_text(json.dumps(record))
    again = run_grid(workspace, tmp_path, "--resume")
    by_key = {tuple(r["key"]): r for r in again["rows"]}
    changed, same = by_key[tuple(record["rows"][1]["key"])], by_key[tuple(record["rows"][2]["key"])]
    assert changed["params"] == record["rows"][1]["params"] - 1 and changed["nll"] > 0 and "exact_match" in changed
    assert {k: same[k] for k in record["rows"][2]} == record["rows"][2] and "exact_match" in same


def selection_row(allocation, min_keep, sparsity, nll, em=None):
    """A row of a selection record (what `--settings-from` reads), with exact match when `em` is given."""
    row = {
        "method": "wanda",
        "allocation": allocation,
        "ranking": "score" if allocation == "global" else None,
        "bias_compensation": False,
        "min_keep": min_keep,
        "min_keep_attention": min_keep,
        "kv_cache_tokens": 0,
        "sparsity": sparsity,
        "nll": nll,
    }
    return row | ({"exact_match": em} if em is not None else {})


def test_settings_from_chooses_per_allocation(tmp_path):
    """`--settings-from` keeps the best validation setting of each allocation, over settings measured at every
    sparsity, and refuses records measured on the test split."""
    row = selection_row

    rows = [row("global", 0.1, 0.2, 3.0), row("global", 0.1, 0.4, 4.0), row("global", 0.5, 0.2, 2.0)]
    rows += [row("global", 0.5, 0.4, 3.0), row("uniform", 0.1, 0.2, 2.5), row("uniform", 0.1, 0.4, 3.5)]
    rows += [row("uniform", 0.5, 0.2, 1.0)]  # best NLL, but measured at 20% only: does not compete
    path = tmp_path / "select.json"
    path.write_text(json.dumps({"split": "validation", "rows": [{"method": "dense"}, *rows]}))
    best = real_model.best_settings([str(path)])["wanda"]
    assert (best["global"]["allocation"], best["global"]["min_keep"], best["global"]["ranking"]) == (
        "global",
        0.5,
        "score",
    )
    assert (best["uniform"]["allocation"], best["uniform"]["min_keep"]) == ("uniform", 0.1)
    path.write_text(json.dumps({"split": "test", "rows": rows}))
    with pytest.raises(SystemExit, match="test split"):
        real_model.best_settings([str(path)])


def test_a_chosen_setting_runs_at_the_runs_width_rounding(tmp_path):
    """A baseline setting chosen from a record without width rounding runs at --round-to (the library default), so
    it is compared with RKU on equally aligned plans; a chosen setting that names its rounding keeps it."""
    rows = [selection_row("global", 0.5, 0.2, 2.0), selection_row("global", 0.5, 0.4, 3.0)]
    path = tmp_path / "select.json"
    path.write_text(json.dumps({"split": "validation", "rows": rows}))
    for flags, expected in (([], "auto"), (["--round-to", "1"], None), (["--round-to", "64", "1"], 64)):
        args = real_model.parse_args(
            ["--methods", "wanda", "--settings-from", str(path), "--allocations", "global", *flags]
        )
        settings = real_model.variants(args, "wanda", False)
        assert settings[0].get("round_to") == expected and len(settings) == len(args.round_to)
        assert all(setting["min_keep"] == 0.5 for setting in settings)
    path.write_text(json.dumps({"split": "validation", "rows": [row | {"round_to": 128} for row in rows]}))
    args = real_model.parse_args(["--methods", "wanda", "--settings-from", str(path), "--allocations", "global"])
    assert [setting["round_to"] for setting in real_model.variants(args, "wanda", False)] == [128]


def test_a_stopped_resume_keeps_the_rows_it_had_not_reached(workspace, tmp_path, monkeypatch):
    """Stopping a resumed run (here: the second exact match fails) leaves every earlier row in the JSON."""
    first = run_grid(workspace, tmp_path, "--em-sparsities")
    calls = []
    measure = real_model.timed_exact_match

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(real_model, "timed_exact_match", once)
    with pytest.raises(KeyboardInterrupt):
        run_grid(workspace, tmp_path, "--resume")
    stopped = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert not stopped["complete"]
    assert sorted(r["key"] for r in stopped["rows"]) == sorted(r["key"] for r in first["rows"])
    assert sum("exact_match" in r for r in stopped["rows"]) == 2  # dense, and the one row that got it


def test_more_problems_on_resume_answer_only_the_new_ones(workspace, tmp_path, monkeypatch):
    """Exact match keeps per-problem verdicts: a resume with more --em-problems answers only the problems a row has
    no verdict for, and ends with the verdicts a fresh run on all of them gives; the report pairs rows on them."""
    torch.set_num_threads(1)
    fresh = run_grid(workspace, tmp_path / "fresh", "--em-problems", "5")
    run_grid(workspace, tmp_path, "--em-problems", "3")
    answered = []
    import optimum_rku.evaluation as evaluation
    from optimum_rku.evaluation.runner import evaluate

    def counting(model, tokenizer, task, dataset=None, **kwargs):
        answered.append(len(dataset))
        return evaluate(model, tokenizer, task, dataset, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", counting, raising=False)
    resumed = run_grid(workspace, tmp_path, "--em-problems", "5", "--resume")
    assert answered == [2] * 5  # dense and the four pruned rows: problems 4 and 5 only
    for again, row in zip(resumed["rows"], fresh["rows"]):
        assert again["key"] == row["key"] and again["em_problems"] == 5
        for key in ("em_correct", "em_correct_flexible", "exact_match", "em_generated_tokens", "em_hit_budget"):
            assert again[key] == row[key], key
    assert resumed["em_task"] == "gsm8k_cot_boxed" and resumed["em_tokens"] == 6

    record = json.loads((tmp_path / "out" / "grid.json").read_text())
    record["rows"][3]["em_correct"] = "11111"  # wanda 20% becomes the best baseline at 20%
    record["rows"][3]["exact_match"] = 1.0
    record["rows"][0]["em_correct"] = "11100"
    compared = real_model.em_comparisons(record)
    assert compared[1]["vs_best_baseline"]["baseline"].startswith("wanda")
    assert compared[1]["vs_best_baseline"]["difference"] == pytest.approx(
        record["rows"][1]["em_correct"].count("1") / 5 - 1.0
    )
    assert "vs_best_baseline" not in compared[3] and compared[3]["kept_of_dense"] == pytest.approx(5 / 3)
    table = real_model.em_markdown(record)
    assert "| wanda global" in table and "difference to best baseline" in table
    assert real_model.em_chart(record, tmp_path / "em.png") and (tmp_path / "em.png").stat().st_size > 0
    assert real_model.em_problems_text(record) == "5"
    record["rows"][2]["em_correct"] = "111"  # rows of a resumed record that answered different counts: say the range
    assert real_model.em_problems_text(record).startswith("3-5 ")


def test_settings_are_chosen_on_exact_match_where_every_row_has_it(tmp_path):
    def row(min_keep, sparsity, nll, em=None):
        return selection_row("global", min_keep, sparsity, nll, em)

    rows = [row(0.1, 0.2, 2.0, 0.30), row(0.1, 0.4, 3.0, 0.10), row(0.5, 0.2, 2.5, 0.32), row(0.5, 0.4, 3.5, 0.12)]
    path = tmp_path / "select.json"
    path.write_text(json.dumps({"split": "validation", "rows": [{"method": "dense"}, *rows]}))
    assert real_model.best_settings([str(path)])["wanda"]["global"]["min_keep"] == 0.5  # higher exact match
    del rows[3]["exact_match"]
    path.write_text(json.dumps({"split": "validation", "rows": [{"method": "dense"}, *rows]}))
    assert real_model.best_settings([str(path)])["wanda"]["global"]["min_keep"] == 0.1  # lower NLL


def test_round_to_rows_keep_aligned_widths_and_old_keys(workspace, tmp_path):
    """`--round-to 1 8`: the rounded row keeps FFN widths in multiples of 8 and says so in its label; the unrounded
    row's key has no round_to (records from before the option still resume)."""
    torch.set_num_threads(1)
    out = run_grid(workspace, tmp_path, "--methods", "magnitude", "--sparsities", "0.4", "--round-to", "1", "8")
    plain, rounded = out["rows"][1:]
    assert "round_to" not in json.loads(plain["key"][-1]) and json.loads(rounded["key"][-1])["round_to"] == 8
    assert rounded["round_to"] == 8 and all(width % 8 == 0 for width in rounded["ffn_per_layer"])
    assert plain["ffn_per_layer"] != rounded["ffn_per_layer"]
    assert "round8" in real_model._label(rounded) and "round" not in real_model._label(plain)


def test_resume_refuses_a_record_calibrated_otherwise(workspace, tmp_path):
    """A row's key does not name its calibration set, so resuming a record made with another --num-calibration
    would pass its plans off as this run's: refused, naming the option and both values."""
    run_grid(workspace, tmp_path, "--em-sparsities")
    with pytest.raises(SystemExit, match="--num-calibration 2, this run asks for 3"):
        run_grid(workspace, tmp_path, "--num-calibration", "3", "--resume")


def test_em_dtype_generates_in_bfloat16_and_keeps_the_rest_float32(workspace, tmp_path, monkeypatch):
    """`--em-dtype bfloat16`: exact match generates on a bfloat16 copy while NLL and pruning stay float32 (the same
    NLL as a float32 run); the record names the dtype and a resume in another dtype is refused."""
    torch.set_num_threads(1)
    plain = run_grid(workspace, tmp_path / "plain", "--methods", "magnitude", "--sparsities", "0.4")
    import optimum_rku.evaluation as evaluation
    from optimum_rku.evaluation.runner import evaluate

    dtypes = []

    def recording(model, tokenizer, task, dataset=None, **kwargs):
        dtypes.append(next(model.parameters()).dtype)
        return evaluate(model, tokenizer, task, dataset, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", recording, raising=False)
    bf16 = run_grid(
        workspace, tmp_path, "--methods", "magnitude", "--sparsities", "0.4", "--em-dtype", "bfloat16",
        "--save-completions",  # into an output folder that does not exist yet
    )  # fmt: skip
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # dense and the pruned row
    assert bf16["em_dtype"] == "bfloat16" and plain["em_dtype"] == "float32"
    for row, reference in zip(bf16["rows"], plain["rows"]):
        assert row["nll"] == reference["nll"] and row["params"] == reference["params"]
        assert len(row["em_correct"]) == 3
    assert "generated in bfloat16" in real_model.em_markdown(bf16)
    answers = (tmp_path / "out" / "grid_completions.jsonl").read_text().splitlines()
    assert len(answers) == 6 and json.loads(answers[0])["row"] == "dense"
    with pytest.raises(SystemExit, match="generated in bfloat16, this run asks for --em-dtype float32"):
        run_grid(workspace, tmp_path, "--methods", "magnitude", "--sparsities", "0.4", "--resume")

    # --render rewrites the table, the charts and the record's derived targets (stale here) from the JSON
    path = tmp_path / "out" / "grid.json"
    path.write_text(json.dumps(dict(bf16, targets=[{"stale": True}])))
    (tmp_path / "out" / "grid.md").unlink()
    assert real_model.main(["--render", str(path)]) == 0
    assert json.loads(path.read_text())["targets"] == real_model.target_checks(bf16)
    assert "generated in bfloat16" in (tmp_path / "out" / "grid.md").read_text()


def test_paired_rows_pairs_every_row_against_the_reference(workspace, tmp_path, capsys):
    """benchmarks/paired_rows.py pairs the rows of several records against one reference row, problem by problem, and
    refuses a record whose verdicts judge another split."""
    import paired_rows

    record = run_grid(workspace, tmp_path)
    path = tmp_path / "out" / "grid.json"
    for row, verdicts in zip(record["rows"], ["110", "100", "011", "111", "000"]):  # a tiny model solves nothing
        row["em_correct"] = verdicts
    path.write_text(json.dumps(record))
    reference = record["rows"][1]
    label = real_model._label(reference)
    other = dict(record, num_calibration=7)
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    prefix = tmp_path / "paired"
    argv = ["--reference", str(path), label, str(reference["sparsity"]), "--records", str(path), str(other_path)]
    assert paired_rows.main([*argv, "--output", str(prefix)]) == 0
    rows = json.loads((prefix.with_suffix(".json")).read_text())["rows"]
    with_verdicts = [r for r in record["rows"] if r["sparsity"] == reference["sparsity"]]
    assert len(rows) == 2 * len(with_verdicts) - 1  # both files' rows at its sparsity, the reference itself once
    itself = next(r for r in rows if r["record"] == str(other_path) and r["variant"] == label)
    assert itself["difference"] == 0 and itself["num_calibration"] == 7 and itself["p_value"] == 1.0
    for row in rows:
        source = next(
            r for r in with_verdicts if real_model._label(r) == row["variant"] and r["sparsity"] == row["sparsity"]
        )
        expected = sum(map(int, source["em_correct"])) - sum(map(int, reference["em_correct"]))
        assert row["difference"] == pytest.approx(expected / row["problems"]) and row["problems"] == 3
        changed = sum(a != b for a, b in zip(source["em_correct"], reference["em_correct"]))
        assert row["only_a"] + row["only_b"] == changed and row["em_dtype"] == "float32"
    assert sum(r["difference"] != 0 for r in rows) == 2  # the other row at its sparsity, in both files
    assert "| other | " in (prefix.with_suffix(".md")).read_text()
    other_path.write_text(json.dumps(dict(record, em_tokens=999)))
    with pytest.raises(SystemExit, match="em_tokens"):
        paired_rows.main(argv)
    with pytest.raises(SystemExit, match="rows with verdicts match"):
        paired_rows.main(["--reference", str(path), "no such row", "0.2", "--records", str(path)])


def test_query_head_rows_are_scored_and_keyed_apart(workspace, tmp_path):
    """`--attention-granularities kv_group query_head`: the query_head row is scored per query head (its key and label
    say so, older kv_group keys are unchanged) and, under GQA, keeps every KV group."""
    torch.set_num_threads(1)
    argv = ["--methods", "magnitude", "--sparsities", "0.5", "--min-keep", "0.1", "--rankings", "per_parameter"]
    out = run_grid(
        workspace, tmp_path, *argv, "--attention-granularities", "kv_group", "query_head", "--em-sparsities"
    )
    group, head = out["rows"][1:]
    assert group["attention_granularity"] == "kv_group" and not any("attention=" in str(k) for k in group["key"])
    assert head["attention_granularity"] == "query_head" and head["key"][-1] == "attention=query_head"
    assert "query_head" in real_model._label(head) and "query_head" not in real_model._label(group)
    assert head["kv_groups_per_layer"] == [4, 4, 4] and group["kv_groups_per_layer"] != [4, 4, 4]
    assert head["heads_per_layer"] != group["heads_per_layer"]


def test_targets_judge_the_default_rku_rows_against_the_best_baseline():
    """The record's targets: RKU with every library default (found by its key, not its label) against the best
    baseline at its sparsity and against dense; a row with another setting is not judged."""

    def row(method, sparsity, verdicts, key=None, **fields):
        base = {"method": method, "sparsity": sparsity, "allocation": "global", "ranking": "auto", "min_keep": 0.1}
        base |= {"min_keep_attention": 0.1, "em_correct": verdicts, "exact_match": verdicts.count("1") / len(verdicts)}
        return base | ({"key": list(key)} if key else {}) | fields

    n = 40
    dense = row("dense", 0.0, "1" * 20 + "0" * 20)
    rku20 = row("rku", 0.2, "1" * 14 + "0" * 26, real_model.default_rku_key(0.2))  # 70% of dense, 4 above FLAP
    flap20 = row("flap", 0.2, "1" * 10 + "0" * 30)
    rku30 = row("rku", 0.3, "1" * 12 + "0" * 28, real_model.default_rku_key(0.3))  # +10 points, every pair favours RKU
    flap30 = row("flap", 0.3, "1" * 2 + "0" * 38)
    other = row("rku", 0.3, "1" * n, ("rku", "another setting"), min_keep=0.5)  # not the defaults: not judged
    checks = real_model.target_checks({"rows": [dense, rku20, flap20, rku30, flap30, other], "num_calibration": 32})
    got = {(c["sparsity"], c["target"]): c["met"] for c in checks}
    assert got == {
        (0.2, "highest exact match"): True,
        (0.2, ">= 75% of dense exact match"): False,
        (0.3, "highest exact match"): True,
        (0.3, "outside the best baseline's paired interval"): True,
    }
    assert next(c for c in checks if "dense" in c["target"])["measured"] == "70%"
    text = real_model.targets_markdown({"rows": [dense, rku20, flap20], "num_calibration": 32})
    assert "| 20% | >= 75% of dense exact match | 70% | **no** |" in text

    # rows of a resumed record answered different counts: the best baseline is chosen on the problems every baseline
    # row answered (a tie goes to the row with more), and RKU is measured against it on the problems both answered
    rku40 = row("rku", 0.4, "10000001", real_model.default_rku_key(0.4))
    wanda40, flap40 = row("wanda", 0.4, "10000000"), row("flap", 0.4, "1000")  # flap's 25% is on its 4 problems only
    assert real_model.best_baselines([dense, rku40, flap40, wanda40])[0.4] is wanda40
    checks = real_model.target_checks({"rows": [dense, rku40, flap40, wanda40]})
    assert checks[0]["measured"] == "RKU 25.0% vs wanda global/auto keep0.1 12.5% (8 problems)" and checks[0]["met"]
    flap40["em_correct"] = "1100"  # now flap is ahead on the common problems: RKU is measured on its 4
    checks = real_model.target_checks({"rows": [dense, rku40, flap40, wanda40]})
    assert checks[0]["measured"] == "RKU 25.0% vs flap global/auto keep0.1 50.0% (4 problems)" and not checks[0]["met"]
