"""Quality benchmark: RKU vs baseline importance methods, same pipeline, same allocation, same removal.

For every (method, calibration set, seed) the model is scored once; the scores are reused for every sparsity by
pruning a fresh deep copy of the dense model with `prune(scores=...)`. Each pruned model is evaluated on GSM8K-style
exact match (strict, 0-shot, greedy) on a test split and an out-of-distribution split, on the perplexity of the gold
solutions given the prompt, on parameters kept and on its per-layer widths. RKU ablations (normalization, objective,
allocation, attention granularity, targets) are scored on the test split only, so no choice is tuned on OOD data.

Default model: the bundled reasoning testbed. Any supported model with GSM8K-format jsonl data works too:

    python benchmarks/quality.py                 # full run on the testbed (about an hour on 2 CPU cores)
    python benchmarks/quality.py --quick         # a few minutes
    python benchmarks/quality.py --model ID --test-data test.jsonl --calib-data train.jsonl [--ood-data ood.jsonl]

Writes JSON, a markdown table and a PNG of accuracy vs sparsity (default: into docs/). `ppl_gold` follows
`optimum_rku.evaluation.likelihood` (exp of its gold-solution NLL: no eos after the answer, the chat template where the
model has one) since the benchmarks share benchmarks/common.py, so older records in docs/quality, whose gold answers
ended in eos, differ slightly in that column.

One script on purpose (over ~450 lines): the command recorded in docs/benchmarks.md reproduces the whole grid.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import ROOT, build_calibration, gold_text  # noqa: E402

from optimum_rku.evaluation.likelihood import GoldTexts, likelihood_metrics  # noqa: E402
from optimum_rku.importance import available_importances, get_importance  # noqa: E402

#: every registered importance method: the project's own (rku) first, random (a floor, not a baseline) last
METHODS = ("rku", *(m for m in available_importances() if m not in ("rku", "random")), "random")
DATA_FREE = tuple(m for m in METHODS if not get_importance(m).needs_calibration)
#: this script's calibration sets (the names its records keep) -> the kinds of common.build_calibration
CALIBRATION_KINDS = {"questions": "questions", "questions+gold": "gold", "self": "self_generated"}
CALIBRATIONS = tuple(CALIBRATION_KINDS)


# ------------------------------------------------------------------------------------------------------------ args
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; `--quick` shrinks every dimension of the grid."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="Hub id or local dir of a supported model (default: the testbed)")
    p.add_argument("--test-data", default=None, help="GSM8K-format jsonl ({question, answer}) for the test split")
    p.add_argument("--ood-data", default=None, help="GSM8K-format jsonl for the OOD split (testbed: its ood split)")
    p.add_argument("--calib-data", default=None, help="GSM8K-format jsonl the calibration sets are drawn from")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.2, 0.3, 0.4, 0.5, 0.6])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="calibration seeds")
    p.add_argument("--calibrations", nargs="+", default=list(CALIBRATIONS), choices=CALIBRATIONS)
    p.add_argument("--num-test", type=int, default=300, help="test problems (>= 300 for the reported numbers)")
    p.add_argument("--num-ood", type=int, default=300, help="OOD problems")
    p.add_argument("--num-calib", type=int, default=128, help="calibration samples per set")
    p.add_argument("--num-ppl", type=int, default=300, help="test problems whose gold-solution perplexity is measured")
    p.add_argument("--max-new-tokens", type=int, default=160, help="generation budget (evaluation and 'self')")
    p.add_argument("--eval-batch-size", type=int, default=100)
    p.add_argument("--score-batch-size", type=int, default=16)
    p.add_argument(
        "--ood-sparsities",
        nargs="+",
        type=float,
        default=[0.4],
        help="sparsities also evaluated on the OOD split (default: 0.4, the claim's sparsity; keeps the run <= 60 min)",
    )
    p.add_argument("--ablation-sparsities", nargs="+", type=float, default=[0.4])
    p.add_argument("--ablation-calibration", default="self", choices=CALIBRATIONS)
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning reference")
    p.add_argument(
        "--torch-pruning-only", action="store_true", help="only the dense model and the Torch-Pruning reference"
    )
    p.add_argument("--quick", action="store_true", help="small grid for a smoke run (a few minutes)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out-dir", default=str(ROOT / "docs"), help="where quality.json / .md / .png go")
    p.add_argument("--name", default="quality", help="output file stem")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the grid (1 torch thread each; 2 fill 2 cores); results are merged",
    )
    p.add_argument(
        "--flap-bias-compensation",
        default="auto",
        choices=("auto", "on", "off"),
        help="FLAP's bias compensation: auto = wherever the model's config can save the bias (Llama: FFN+attention)",
    )
    p.add_argument("--worker-claims", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tp-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tp-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tp-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sparsities = [0.4]
        args.seeds = args.seeds[:1]
        args.num_test, args.num_ood, args.num_calib, args.num_ppl = 60, 30, 32, 60
        args.no_ablations = args.no_torch_pruning = True
        if args.name == "quality":
            args.name = "quality_quick"
    for s in args.sparsities + args.ablation_sparsities:
        if not 0.0 < s <= 0.9:
            raise ValueError(f"sparsity {s!r} is out of range; allowed: (0, 0.9].")
    for name in ("num_test", "num_ood", "num_calib", "num_ppl", "max_new_tokens", "eval_batch_size", "workers"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1.")
    if args.model is not None and (args.test_data is None or args.calib_data is None):
        raise ValueError("--model needs --test-data and --calib-data (GSM8K-format jsonl); --ood-data is optional.")
    for name in ("test_data", "ood_data", "calib_data"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {value!r} does not exist.")
    return args


# ------------------------------------------------------------------------------------------------------------ data
def read_jsonl(path: str) -> list[dict[str, str]]:
    """Rows of a GSM8K-format jsonl file (question / answer strings)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                raise ValueError(f"{path}:{number} needs string 'question' and 'answer' fields.")
            rows.append({"question": row["question"], "answer": row["answer"]})
    return rows


class Problems:
    """Test / OOD problems and a calibration pool; testbed splits by default, jsonl files otherwise."""

    def __init__(self, args: argparse.Namespace, testbed: bool):
        self.testbed = testbed
        if testbed:
            from optimum_rku.testbed import make_problems

            self._make = make_problems
            self.test = make_problems(args.num_test, seed=0, split="test")
            self.ood = make_problems(args.num_ood, seed=0, split="ood") if args.ood_data is None else None
            self.source = "optimum-rku testbed (test / ood / train splits)"
        else:
            self.test = read_jsonl(args.test_data)[: args.num_test]
            self.pool = read_jsonl(args.calib_data)
            self.source = f"{Path(args.test_data).name} / {Path(args.calib_data).name}"
            self.ood = None
        if args.ood_data is not None:
            self.ood = read_jsonl(args.ood_data)[: args.num_ood]
        self.num_calib = args.num_calib
        self.num_ppl = args.num_ppl
        self._gold: GoldTexts | None = None

    def calibration_problems(self, seed: int) -> list[dict[str, str]]:
        """`num_calib` training problems drawn with `seed` (never from the test or OOD splits)."""
        if self.testbed:
            return self._make(self.num_calib, seed=1000 + seed, split="train")
        rows = list(self.pool)
        random.Random(seed).shuffle(rows)
        return rows[: self.num_calib]

    def gold_texts(self, tokenizer) -> GoldTexts:
        """The first `num_ppl` test problems, tokenized once, for the gold-solution perplexity (`ppl_gold`)."""
        if self._gold is None:
            self._gold = GoldTexts(tokenizer, self.test[: self.num_ppl], plain=False)
        return self._gold


def calibration_set(kind: str, seed: int, problems: Problems, model, tokenizer, args, cache: dict):
    """Tokenized calibration set: questions only, question + gold answer, or question + the model's own answer."""
    key = (kind, seed)
    if key not in cache:
        rows = problems.calibration_problems(seed)
        cache[key] = build_calibration(
            CALIBRATION_KINDS[kind], model, tokenizer, rows, seed, args.max_new_tokens, progress=False
        )
    return cache[key]


# ------------------------------------------------------------------------------------------------------------ metrics
def evaluate(model, tokenizer, problems: Problems, args, ood: bool = True) -> dict[str, Any]:
    """Strict exact match on test (and OOD), gold perplexity, parameter count."""
    from optimum_rku.evaluation import evaluate_gsm8k
    from optimum_rku.models.geometry import prunable_parameters

    start = time.perf_counter()
    common = dict(num_fewshot=0, batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, progress=False)
    out: dict[str, Any] = {}
    out["acc_test"] = evaluate_gsm8k(model, tokenizer, dataset=problems.test, **common).exact_match_strict
    if ood and problems.ood:
        out["acc_ood"] = evaluate_gsm8k(model, tokenizer, dataset=problems.ood, **common).exact_match_strict
    gold = likelihood_metrics(model, problems.gold_texts(tokenizer), batch_size=32, nll_only=True)
    out["ppl_gold"] = math.exp(gold["nll"])
    out["params_total"] = sum(p.numel() for p in model.parameters())
    out["params_prunable"] = prunable_parameters(model)
    out["eval_time_s"] = round(time.perf_counter() - start, 2)
    return out


# ------------------------------------------------------------------------------------------------------------ runs
class Runner:
    """Holds the dense model and results; scores once per (variant, calibration, seed), prunes per sparsity."""

    def __init__(self, args: argparse.Namespace):
        from optimum_rku import RKUPruner
        from optimum_rku.models.geometry import prunable_parameters

        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        pruner = RKUPruner.from_pretrained(args.model, torch_dtype=torch.float32)
        self.dense, self.tokenizer = pruner.model.eval(), pruner.tokenizer
        self.testbed = pruner.data.name == "testbed"
        self.problems = Problems(args, self.testbed)
        self.dense_prunable = prunable_parameters(self.dense)
        self.calib_cache: dict = {}
        self.results: list[dict[str, Any]] = []
        self.out_dir = Path(args.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", flush=True)

    def run_scored(
        self,
        group: str,
        method: str,
        calibration: str,
        seed: int,
        sparsities: list[float],
        overrides: dict | None = None,
        variant: str = "default",
        ood: bool = True,
        derive_none: bool = False,
    ) -> None:
        """Score once with (method, calibration, seed, overrides); prune and evaluate at every sparsity."""
        from optimum_rku import RKUConfig, RKUPruner

        overrides = dict(overrides or {})
        if method == "flap" and self.args.flap_bias_compensation != "off":
            overrides.setdefault("bias_compensation", self._flap_can_compensate(overrides))
        calib_kwargs = {"calibration": "self_generated"} if calibration == "self" else {}
        base = RKUConfig(importance=method, seed=seed, **calib_kwargs, **overrides)
        dataset = None
        if method not in DATA_FREE:
            dataset = calibration_set(
                calibration, seed, self.problems, self.dense, self.tokenizer, self.args, self.calib_cache
            )
        start = time.perf_counter()
        scorer = RKUPruner(self.dense, self.tokenizer)
        scores = scorer.compute_scores(
            base,
            calibration_dataset=dataset,
            batch_size=self.args.score_batch_size,
            progress=not self.args.no_progress,
        )
        score_time = time.perf_counter() - start
        if derive_none:  # normalization="none" is the raw score of the same statistics: no second pass needed
            scores = copy.deepcopy(scores)
            scores.mlp, scores.attention = list(scores.mlp_raw), list(scores.attention_raw)
            scores.normalization = "none"
            base = RKUConfig(**{**base.to_dict(), "normalization": "none"})
        for sparsity in sparsities:
            config = RKUConfig(**{**base.to_dict(), "sparsity": sparsity})
            model = copy.deepcopy(self.dense)
            pruner = RKUPruner(model, self.tokenizer)
            pruned = pruner.prune(config, scores=scores, progress=False)
            meta = pruner.metadata()
            record = {
                "job": getattr(self, "job", 0),
                "group": group,
                "method": method,
                "variant": variant,
                "calibration": calibration if method not in DATA_FREE else "none",
                "seed": seed,
                "sparsity": sparsity,
                "config": {k: v for k, v in config.to_dict().items() if k in _CONFIG_KEYS},
                "achieved_sparsity": meta["parameters"]["achieved_sparsity"],
                "widths": [
                    [lay["intermediate_size"], lay["num_attention_heads"], lay["num_key_value_heads"]]
                    for lay in meta["plan"]["layers"]
                ],
                "score_time_s": round(score_time, 2),
                "calibration_tokens": scores.calibration.get("num_tokens", 0),
            }
            wanted = self.args.ood_sparsities
            on_ood = ood and (wanted is None or any(abs(sparsity - w) < 1e-9 for w in wanted))
            record.update(evaluate(pruned, self.tokenizer, self.problems, self.args, ood=on_ood))
            self.results.append(record)
            self.log(
                f"{group:9s} {method:9s} {variant:22s} {record['calibration']:15s} seed={seed} s={sparsity:.2f} "
                f"acc={record['acc_test']:.3f} ood={record.get('acc_ood', float('nan')):.3f} "
                f"ppl={record['ppl_gold']:.2f} ({record['eval_time_s']}s)"
            )
            del model, pruned, pruner
        self.save()

    def _flap_can_compensate(self, overrides: dict) -> bool:
        """Whether FLAP's bias compensation is used: always with "on" (errors if impossible), else where it loads."""
        from optimum_rku import RKUConfig
        from optimum_rku.models.specs import check_output_bias

        if self.args.flap_bias_compensation == "on":
            return True
        config = RKUConfig(**{k: v for k, v in overrides.items() if k != "bias_compensation"})
        try:
            check_output_bias(self.dense.config, config.target_parts)
        except ValueError:
            return False
        return True

    def dense_record(self) -> None:
        record = {"group": "dense", "method": "dense", "variant": "default", "calibration": "none", "seed": 0}
        record.update({"sparsity": 0.0, "achieved_sparsity": 0.0, "score_time_s": 0.0})
        from optimum_rku.models.blocks import blocks

        record["widths"] = [[b.intermediate_size, b.num_heads, b.num_kv_heads] for b in blocks(self.dense)]
        record.update(evaluate(self.dense, self.tokenizer, self.problems, self.args))
        self.results.append(record)
        self.log(f"dense acc={record['acc_test']:.3f} ood={record.get('acc_ood', float('nan')):.3f}")

    def save(self) -> None:
        payload = {
            "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
            "model": "testbed" if self.testbed else self.args.model,
            "data": self.problems.source,
            "num_test": len(self.problems.test),
            "num_ood": len(self.problems.ood or []),
            "num_calibration_samples": self.args.num_calib,
            "seeds": self.args.seeds,
            "sparsities": self.args.sparsities,
            "torch_threads": torch.get_num_threads(),
            "elapsed_s": round(time.perf_counter() - self.started, 1),
            "results": self.results,
            "torch_pruning": getattr(self, "torch_pruning", None),
        }
        path = self.out_dir / f"{self.args.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, path)


_CONFIG_KEYS = (
    "objective",
    "normalization",
    "allocation",
    "attention_granularity",
    "targets",
    "calibration",
    "bias_compensation",
)


def grid_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Main grid as `Runner.run_scored` keyword sets: methods x calibration sets x seeds, every sparsity."""
    jobs: list[dict[str, Any]] = []

    def add(method: str, calibration: str, seed: int) -> None:
        jobs.append(dict(group="main", method=method, calibration=calibration, seed=seed, sparsities=args.sparsities))

    for method in args.methods:
        if method == "magnitude":  # data-free and deterministic: one run
            add(method, "none", args.seeds[0])
        elif method == "random":
            for seed in args.seeds:
                add(method, "none", seed)
        else:
            for calibration in args.calibrations:
                for seed in args.seeds:
                    add(method, calibration, seed)
    return jobs


def ablation_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """RKU ablations on the test split only (no OOD, so no default is tuned on it)."""
    jobs: list[dict[str, Any]] = []
    sps, calib = args.ablation_sparsities, args.ablation_calibration

    def add(calibration: str, seed: int, overrides: dict, variant: str, **extra) -> None:
        jobs.append(
            dict(group="ablation", method="rku", calibration=calibration, seed=seed, sparsities=sps,
                 overrides=overrides, variant=variant, ood=False, **extra)
        )  # fmt: skip

    for seed in args.seeds:
        # objective x calibration (the default objective is part of the main grid)
        for calibration in args.calibrations:
            # decode_nll (the default) on plain text is nll, so nll is only a separate variant on "self"
            objectives = ["hidden_energy", "self_nll"] + (["nll"] if calibration == "self" else [])
            for objective in objectives:
                add(calibration, seed, {"objective": objective}, f"objective={objective}")
        add(calib, seed, {}, "normalization=none", derive_none=True)
        add(calib, seed, {"allocation": "uniform"}, "allocation=uniform")
        add(calib, seed, {"attention_granularity": "query_head"}, "granularity=query_head")
        add(calib, seed, {"targets": "mlp"}, "targets=mlp")
        # the global pool: the old raw-score ranking, RKU's other loss estimate, and no KV-cache price
        add(calib, seed, {"ranking": "score"}, "ranking=score")
        add(calib, seed, {"ranking": "expected_loss"}, "ranking=expected_loss")
        add(calib, seed, {"kv_cache_tokens": 0}, "kv_cache_tokens=0")
        add(calib, seed, {"token_gradient_floor": 0.0}, "token_gradient_floor=0")
    return jobs


def all_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every scored run of this invocation, in a fixed order (the index identifies a job across worker processes)."""
    jobs = grid_jobs(args)
    if not args.no_ablations and "rku" in args.methods:
        jobs += ablation_jobs(args)
    return jobs


def _claim(claims: str, index: int | str) -> bool:
    """Atomically take job `index` for this process (one file per job; the first creator wins)."""
    try:
        os.close(os.open(os.path.join(claims, f"job{index}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def run_jobs(runner: Runner, jobs: list[dict[str, Any]], claims: str | None = None) -> None:
    """Run every job (or, as a worker, every job this process claims first)."""
    for index, job in enumerate(jobs):
        if claims is None or _claim(claims, index):
            runner.job = index
            runner.run_scored(**job)


def run_workers(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Share the jobs among `args.workers` child processes (dynamic: each takes the next unclaimed job); merge."""
    import subprocess
    import tempfile

    started = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        claims = Path(tmp) / "claims"
        claims.mkdir()
        children = []
        for k in range(args.workers):
            command = [sys.executable, __file__, *_without(argv, "--workers"), "--workers", "1"]
            command += ["--worker-claims", str(claims)]
            command += ["--threads", "1", "--no-torch-pruning", "--out-dir", tmp, "--name", f"worker{k}"]
            log = open(Path(tmp) / f"worker{k}.log", "w")
            children.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, k))
        failed = []
        for child, log, k in children:
            child.wait()
            log.close()
            text = (Path(tmp) / f"worker{k}.log").read_text()
            print(text, end="", flush=True)
            if child.returncode != 0:
                failed.append(k)
        if failed:
            raise RuntimeError(f"quality worker(s) {failed} failed; their output is printed above.")
        parts = [json.loads((Path(tmp) / f"worker{k}.json").read_text()) for k in range(args.workers)]
    payload = dict(parts[0])
    results = [r for part in parts for r in part["results"]]
    dense = [r for r in results if r["group"] == "dense"][:1]
    scored = sorted((r for r in results if r["group"] != "dense"), key=lambda r: (r["job"], r["sparsity"]))
    payload.update(
        command="python benchmarks/quality.py " + " ".join(argv),
        results=dense + scored,
        torch_threads=1,
        workers=args.workers,
        elapsed_s=round(time.perf_counter() - started, 1),
    )
    return payload


# ------------------------------------------------------------------------------------------------------------ TP ref
TP_RUNS = ("magnitude", "taylor", "magnitude-mlp", "taylor-mlp")


def torch_pruning_reference(runner: Runner, sparsity: float = 0.4, timeout_s: float = 300.0) -> dict[str, Any]:
    """Torch-Pruning (benchmark extra) on the same model at `sparsity`, magnitude and Taylor importance.

    Torch-Pruning prunes locally (the same widths in every layer), so it runs twice per importance: KV groups + FFN
    channels ("both"), and FFN channels only ("-mlp"). Beside it, optimum-rku's own magnitude / taylor under the same
    constraints (allocation="uniform", targets both / mlp) are scored, so the two implementations can be compared
    like for like. Each Torch-Pruning run happens in a child process (this script with `--tp-child`) under a time
    limit, so a hang inside Torch-Pruning is reported instead of blocking the benchmark.
    """
    import subprocess
    import tempfile

    out: dict[str, Any] = {"sparsity": sparsity}
    try:
        import torch_pruning as tp
    except ImportError as err:
        out["error"] = f"torch-pruning is not installed ({err}); pip install torch-pruning"
        return out
    out["version"] = getattr(tp, "__version__", "unknown")
    for name in TP_RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "tp.json"
            argv = _without(_without(sys.argv[1:], "--workers"), "--threads")
            command = [sys.executable, __file__, *argv, "--threads", "1", "--tp-child", name, "--tp-out", str(result)]
            command += ["--tp-timeout", str(timeout_s)]
            try:
                subprocess.run(command, timeout=timeout_s + 120, check=False, capture_output=True)
            except subprocess.TimeoutExpired:
                pass
            if result.is_file():
                entry = json.loads(result.read_text())
            else:
                entry = {"error": f"the Torch-Pruning child process gave no result within {timeout_s + 120:.0f}s"}
        out[name] = entry
        runner.log(f"torch-pruning {name}: {_one_line(json.dumps(entry))[:400]}")
    calibration = runner.args.calibrations[0] if "questions+gold" not in runner.args.calibrations else "questions+gold"
    for method in ("magnitude", "taylor"):
        for targets in ("both", "mlp"):
            overrides = {"allocation": "uniform", "targets": targets}
            variant = f"uniform, targets={targets}"
            runner.run_scored("reference", method, calibration, runner.args.seeds[0], [sparsity], overrides, variant)
    return out


def _tp_child(runner: Runner, name: str, sparsity: float, timeout_s: float, out_path: str) -> None:
    """Prune a copy of the dense model with Torch-Pruning (benchmarks/torch_pruning_reference.py) and evaluate it."""
    import io
    import signal
    import traceback

    from torch_pruning_reference import run_torch_pruning

    from optimum_rku.models.blocks import blocks
    from optimum_rku.models.geometry import prunable_parameters

    stage = {"now": "setup"}

    def on_timeout(signum, frame):
        stack = io.StringIO()
        traceback.print_stack(frame, file=stack, limit=4)
        raise TimeoutError(f"no result after {timeout_s:.0f}s during {stage['now']}; stuck at:\n{stack.getvalue()}")

    signal.signal(signal.SIGALRM, on_timeout)
    signal.alarm(int(timeout_s))
    entry: dict[str, Any] = {}
    try:
        model = copy.deepcopy(runner.dense)
        problems = runner.problems.calibration_problems(runner.args.seeds[0])
        texts = [gold_text(r) for r in problems]
        importance, _, targets = name.partition("-")
        stage["now"] = "Torch-Pruning"
        entry.update(
            run_torch_pruning(model, runner.tokenizer, texts, importance, sparsity, targets=targets or "both")
        )
        model.zero_grad(set_to_none=True)
        entry["achieved_sparsity"] = 1 - prunable_parameters(model) / runner.dense_prunable
        entry["widths"] = [[b.intermediate_size, b.num_heads, b.num_kv_heads] for b in blocks(model)]
        stage["now"] = "evaluation"
        with torch.no_grad():
            entry.update(evaluate(model, runner.tokenizer, runner.problems, runner.args))
    except BaseException as err:  # report exactly why it could not run on this model / transformers version
        entry["error"] = f"{type(err).__name__}: {err}"
    signal.alarm(0)
    Path(out_path).write_text(json.dumps(entry))


# ------------------------------------------------------------------------------------------------------------ report
def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(results: list[dict[str, Any]], group: str, metric: str) -> dict[tuple, dict[float, list[float]]]:
    table: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r["group"] == group and metric in r:
            table[(r["method"], r["variant"], r["calibration"])][r["sparsity"]].append(r[metric])
    return table


def markdown(payload: dict[str, Any]) -> str:
    """Markdown tables: accuracy (test, OOD), gold perplexity per sparsity; ablations; params; Torch-Pruning."""
    results = payload["results"]
    sparsities = sorted({r["sparsity"] for r in results if r["group"] == "main"})
    dense = next((r for r in results if r["group"] == "dense"), None)
    lines = [f"Command: `{payload['command']}`", ""]
    lines.append(
        f"Model: {payload['model']}; data: {payload['data']}; {payload['num_test']} test / {payload['num_ood']} OOD "
        f"problems (0-shot, greedy, strict exact match); {payload['num_calibration_samples']} calibration samples; "
        f"seeds {payload['seeds']}; {payload['elapsed_s'] / 60:.1f} min wall, "
        + (
            f"{payload['workers']} worker processes x 1 torch thread."
            if payload.get("workers", 1) > 1
            else f"{payload['torch_threads']} torch threads."
        )
    )
    if dense:
        lines.append(
            f"Dense: test {dense['acc_test']:.3f}, OOD {dense.get('acc_ood', float('nan')):.3f}, "
            f"gold ppl {dense['ppl_gold']:.3f}, {dense['params_prunable']:,} prunable parameters."
        )
    for metric, title in (("acc_test", "Test accuracy"), ("acc_ood", "OOD accuracy"), ("ppl_gold", "Gold ppl")):
        table = summarize(results, "main", metric)
        if not table:
            continue
        lines += ["", f"**{title}** (mean ± std over seeds) by sparsity", ""]
        lines.append("| method | calibration | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |")
        lines.append("|---|---|" + "---|" * len(sparsities))
        for (method, _variant, calibration), by_sparsity in sorted(table.items(), key=lambda kv: _order(kv[0])):
            cells = [_mean_std(by_sparsity.get(s, [])) for s in sparsities]
            lines.append(f"| {method} | {calibration} | " + " | ".join(cells) + " |")
    ablation = summarize(results, "ablation", "acc_test")
    if ablation:
        abl_sps = sorted({s for v in ablation.values() for s in v})
        main = summarize(results, "main", "acc_test")
        lines += [
            "",
            "**RKU ablations** (test accuracy, mean ± std over seeds; default = decode_nll, fisher_trace, "
            "global (ranking auto, kv_cache_tokens auto), kv_group, both)",
            "",
        ]
        lines.append("| variant | calibration | " + " | ".join(f"{s:.0%}" for s in abl_sps) + " |")
        lines.append("|---|---|" + "---|" * len(abl_sps))
        rows = [(k, v) for k, v in main.items() if k[0] == "rku"] + list(ablation.items())
        for (_method, variant, calibration), by_sparsity in sorted(rows, key=lambda kv: (kv[0][1], kv[0][2])):
            cells = [_mean_std(by_sparsity.get(s, [])) for s in abl_sps]
            lines.append(f"| {variant} | {calibration} | " + " | ".join(cells) + " |")
    lines += ["", "**Kept widths at 40%** (first seed; per layer: FFN channels / query heads / KV heads)", ""]
    seen = set()
    for r in results:
        key = (r["method"], r["calibration"], r["variant"])
        if r["group"] == "main" and abs(r["sparsity"] - 0.4) < 1e-9 and key not in seen:
            seen.add(key)
            widths = ", ".join(f"{w[0]}/{w[1]}/{w[2]}" for w in r["widths"])
            lines.append(
                f"- {r['method']} ({r['calibration']}): {widths}; params {r['params_total']:,} "
                f"(prunable {r['params_prunable']:,}, removed {r['achieved_sparsity']:.3f}); "
                f"scoring {r['score_time_s']}s"
            )
    tp_ref = payload.get("torch_pruning")
    if tp_ref:
        lines += ["", f"**Torch-Pruning {tp_ref.get('version', '')} reference at {tp_ref['sparsity']:.0%}**", ""]
        if "error" in tp_ref:
            lines.append(f"- not run: {tp_ref['error']}")
        for name in TP_RUNS:
            entry = tp_ref.get(name)
            if not entry:
                continue
            if "error" in entry:
                lines.append(f"- Torch-Pruning {name}: failed: {_one_line(entry['error'])}")
            else:
                widths = ", ".join(f"{w[0]}/{w[1]}/{w[2]}" for w in entry["widths"])
                lines.append(
                    f"- Torch-Pruning {name}: test {entry['acc_test']:.3f}, OOD {entry.get('acc_ood', float('nan')):.3f}, "
                    f"ppl {entry['ppl_gold']:.2f}, removed {entry['achieved_sparsity']:.3f} of prunable parameters, "
                    f"widths {widths}, pruning time {entry['time_s']}s"
                )
        for r in results:
            if r["group"] == "reference":
                widths = ", ".join(f"{w[0]}/{w[1]}/{w[2]}" for w in r["widths"])
                lines.append(
                    f"- optimum-rku {r['method']} ({r['variant']}, {r['calibration']}): test {r['acc_test']:.3f}, "
                    f"ppl {r['ppl_gold']:.2f}, removed {r['achieved_sparsity']:.3f}, widths {widths}, "
                    f"scoring {r['score_time_s']}s"
                )
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _order(key: tuple) -> tuple:
    method, _variant, calibration = key
    m = METHODS.index(method) if method in METHODS else len(METHODS)
    c = CALIBRATIONS.index(calibration) if calibration in CALIBRATIONS else -1
    return (m, c)


METHOD_COLORS = {"rku": "tab:green", "magnitude": "tab:red", "wanda": "tab:purple", "flap": "tab:olive"}
METHOD_COLORS.update({"taylor": "tab:blue", "random": "tab:gray"})
CALIBRATION_STYLES = {"self": "-", "questions+gold": "--", "questions": ":", "none": "-."}


def plot(payload: dict[str, Any], path: Path) -> None:
    """Test accuracy vs sparsity per (method, calibration) (mean ± std over seeds) and OOD accuracy as bars.

    Colour = method, line style = calibration set; dense is the dashed black line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = payload["results"]
    dense = next((r for r in results if r["group"] == "dense"), None)
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    table = sorted(summarize(results, "main", "acc_test").items(), key=lambda kv: _order(kv[0]))
    for (method, _variant, calibration), by_sparsity in table:
        xs = sorted(by_sparsity)
        ys = [statistics.mean(by_sparsity[x]) for x in xs]
        es = [statistics.stdev(by_sparsity[x]) if len(by_sparsity[x]) > 1 else 0.0 for x in xs]
        label = method if calibration == "none" else f"{method} ({calibration})"
        ax.errorbar(
            xs,
            ys,
            yerr=es,
            label=label,
            color=METHOD_COLORS.get(method),
            linestyle=CALIBRATION_STYLES.get(calibration, "-"),
            marker="o",
            markersize=3,
            capsize=2,
            linewidth=2.0 if method == "rku" else 1.2,
        )
    if dense:
        ax.axhline(dense["acc_test"], color="black", linestyle="--", linewidth=0.8, label="dense")
    ax.set_title("test exact match vs sparsity (colour = method, style = calibration)")
    ax.set_xlabel("sparsity (fraction of prunable parameters removed)")
    ax.set_ylabel("strict exact match")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ood = sorted(summarize(results, "main", "acc_ood").items(), key=lambda kv: _order(kv[0]))
    labels, heights, colors = [], [], []
    for (method, _variant, calibration), by_sparsity in ood:
        for sparsity in sorted(by_sparsity):
            labels.append(f"{method} ({calibration}) {sparsity:.0%}")
            heights.append(statistics.mean(by_sparsity[sparsity]))
            colors.append(METHOD_COLORS.get(method, "tab:gray"))
    bars.bar(range(len(heights)), heights, color=colors)
    bars.set_xticks(range(len(labels)), labels, fontsize=6, rotation=60, ha="right")
    if dense and "acc_ood" in dense:
        bars.axhline(dense["acc_ood"], color="black", linestyle="--", linewidth=0.8, label="dense")
        bars.legend(fontsize=7)
    bars.set_ylim(0, max([0.05, *heights, dense.get("acc_ood", 0) if dense else 0]) * 1.1)
    bars.set_title("OOD exact match")
    bars.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.workers > 1 and args.worker_claims is None and not args.tp_child and not args.torch_pruning_only:
        payload = run_workers(args, argv)
        if not args.no_torch_pruning:
            runner = Runner(args)
            payload["torch_pruning"] = torch_pruning_reference(runner)
            payload["results"] += runner.results  # optimum-rku under Torch-Pruning's constraints
        return write_report(payload, Path(args.out_dir), args.name)
    runner = Runner(args)
    if args.tp_child:  # internal: one Torch-Pruning run in a child process
        _tp_child(runner, args.tp_child, 0.4, args.tp_timeout, args.tp_out)
        return {}
    claims = args.worker_claims
    if claims is None or _claim(claims, "dense"):
        runner.log(f"{len(runner.problems.test)} test, {len(runner.problems.ood or [])} OOD problems")
        runner.dense_record()
    if not args.torch_pruning_only:
        run_jobs(runner, all_jobs(args), claims)
    if not args.no_torch_pruning:
        runner.torch_pruning = torch_pruning_reference(runner)
    runner.save()
    payload = json.loads((runner.out_dir / f"{args.name}.json").read_text())
    if claims is not None:  # a worker: the parent merges and reports
        return payload
    return write_report(payload, runner.out_dir, args.name)


def write_report(payload: dict[str, Any], out_dir: Path, name: str) -> dict[str, Any]:
    """Write `name`.json / .md / .png into `out_dir` and print the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"{name}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out_dir / f"{name}.json")
    text = markdown(payload)
    (out_dir / f"{name}.md").write_text(text)
    plot(payload, out_dir / f"{name}.png")
    print(text)
    return payload


def _without(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value (`--flag V` or `--flag=V`)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


if __name__ == "__main__":
    main()
