"""Prune the bundled reasoning testbed with RKU, save it, reload it with transformers, and evaluate it.

Runs offline on a laptop CPU in about a minute: python examples/quickstart.py
"""

import tempfile

from transformers import AutoModelForCausalLM

from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.evaluation import evaluate_gsm8k
from optimum_rku.testbed import make_problems

pruner = RKUPruner.from_pretrained()  # the bundled testbed; pass a Hub id or a directory for your own model
with tempfile.TemporaryDirectory() as tmp:
    model = pruner.prune(RKUConfig(sparsity=0.3, allocation="uniform"), save_dir=f"{tmp}/testbed-rku-30")
    meta = pruner.metadata()["parameters"]
    print(f"parameters {meta['total_before']:,} -> {meta['total_after']:,} ({meta['achieved_sparsity']:.1%} pruned)")
    # uniform widths; the kept head count (6 of 8) does not divide the hidden size, which the stock Llama config
    # rejects, so the checkpoint carries its small modeling_rku.py (optimum_rku.RKUModelForCausalLM needs none)
    reloaded = AutoModelForCausalLM.from_pretrained(f"{tmp}/testbed-rku-30", trust_remote_code=True)
    problems = make_problems(50, seed=0, split="test")
    result = evaluate_gsm8k(reloaded, pruner.tokenizer, dataset=problems, num_fewshot=0, batch_size=25)
    print(f"exact match on {result.num_samples} testbed problems: {result.exact_match_strict:.1%}")
