"""Paired exact-match comparison of rows across `real_model.py` records against one reference row.

A record's own table pairs each row with the best baseline at its sparsity; choosing a default needs other pairs
(a setting against the current default, a record calibrated otherwise against the main one). This script pairs every
row with per-problem verdicts at the reference's sparsity in `--records` against one `--reference` row, on the
problems both answered: the accuracy difference with its 95% paired bootstrap interval and McNemar's exact p-value.

    python benchmarks/paired_rows.py --reference docs/real_model/qwen_select.json "rku global/auto kv6144 keep0.1" \
        0.25 --records docs/real_model/qwen_select.json docs/real_model/qwen_select_calibration.json

Records must share the split, the exact-match task and the answer budget (else the verdicts judge other things);
they may differ in the dtype they generated in (`--em-dtype`), which is how a bfloat16 record is checked against the
float32 one: the table counts the verdicts that changed.
Prints a markdown table; `--output PREFIX` also writes `PREFIX.json` and `PREFIX.md`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from real_model import _label, paired_verdicts

#: the record fields two records' verdicts must share to be paired
SAME_FIELDS = ("model", "split", "em_task", "em_tokens")


def find_row(record: dict, label: str, sparsity: float) -> dict:
    """The row of `record` with this label and sparsity and per-problem verdicts."""
    rows = [r for r in record["rows"] if _label(r) == label and abs(r["sparsity"] - sparsity) < 1e-9]
    rows = [r for r in rows if "em_correct" in r]
    if len(rows) != 1:
        labels = sorted({f"{_label(r)} @ {r['sparsity']:g}" for r in record["rows"] if "em_correct" in r})
        raise SystemExit(f"--reference: {len(rows)} rows with verdicts match {label!r} @ {sparsity:g}; rows: {labels}")
    return rows[0]


def compare(reference: dict, ref_record: dict, records: dict[str, dict]) -> list[dict]:
    """Every row with verdicts in `records` (but the reference) paired against `reference`."""
    out = []
    for path, record in records.items():
        differing = [f for f in SAME_FIELDS if record.get(f) != ref_record.get(f)]
        if differing:
            raise SystemExit(f"{path}: other {differing} than the reference's record; its verdicts cannot be paired")
        for row in record["rows"]:
            if "em_correct" not in row or row is reference or abs(row["sparsity"] - reference["sparsity"]) > 1e-9:
                continue
            out.append(
                {
                    "record": path,
                    "variant": _label(row),
                    "num_calibration": record.get("num_calibration"),
                    "em_dtype": record.get("em_dtype", "float32"),
                    "sparsity": row["sparsity"],
                    **paired_verdicts(row, reference),
                }
            )
    return out


def markdown(reference_label: str, sparsity: float, rows: list[dict]) -> str:
    lines = [
        f"Paired against `{reference_label}` at {sparsity:.0%} (95% paired bootstrap interval, McNemar p).",
        "",
        "| record | variant | calibration questions | generated in | sparsity | problems | exact match | "
        "difference [95%] | p | verdicts changed (only this row / only the reference right) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {Path(r['record']).stem} | {r['variant']} | {r['num_calibration']} | {r['em_dtype']} | "
            f"{r['sparsity']:.0%} | {r['problems']} | {100 * r['exact_match']:.1f}% | {100 * r['difference']:+.1f} "
            f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] | {r['p_value']:.3g} | "
            f"{r['only_a'] + r['only_b']} ({r['only_a']} / {r['only_b']}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", nargs=3, metavar=("RECORD", "LABEL", "SPARSITY"), required=True)
    p.add_argument("--records", nargs="+", required=True, help="real_model.py JSON records whose rows are paired")
    p.add_argument("--output", default=None, help="prefix of the JSON and markdown written (default: print only)")
    args = p.parse_args(argv)
    ref_path, label, sparsity = args.reference[0], args.reference[1], float(args.reference[2])
    ref_record = json.loads(Path(ref_path).read_text())
    reference = find_row(ref_record, label, sparsity)
    records = {path: json.loads(Path(path).read_text()) for path in args.records}
    if ref_path in records:  # the same file read twice would not hold the reference row object itself
        records[ref_path] = ref_record
    rows = compare(reference, ref_record, records)
    text = markdown(label, sparsity, rows)
    print(text)
    if args.output:
        payload = {"reference": {"record": ref_path, "variant": label, "sparsity": sparsity}, "rows": rows}
        Path(f"{args.output}.json").write_text(json.dumps(payload, indent=1) + "\n")
        Path(f"{args.output}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
