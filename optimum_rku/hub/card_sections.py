"""The body sections of a model card (evaluation, per-layer table, calibration, recovery, usage, llama.cpp), one each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optimum_rku.data.providers import DataProvider, provider_for, providers
from optimum_rku.evaluation.registry import task_of
from optimum_rku.export.quantize import type_counts
from optimum_rku.hub.labels import human_bytes, human_count, percent, source_label
from optimum_rku.io.adapter import EVALUATED_LABELS


def problem_provider(result: Mapping[str, Any], meta: Mapping[str, Any]) -> DataProvider | None:
    """The data provider whose own problems a result is on, or None for problems the user supplied ("custom")."""
    name = result.get("benchmark")
    if name is None:  # results written before the problem set was recorded: read it from their description
        description = str(result.get("dataset", "")).lower()
        name = next((p.name for p in providers() if p.name in description), None)
        own = provider_for(metadata=meta)
        if name is None and description.startswith("list") and own.model_alias:  # the checkpoint's own problems
            name = own.name
    return next((p for p in providers() if p.name == name), None)


def problems_label(result: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """How the card's tables name a result's problem set."""
    provider = problem_provider(result, meta)
    return provider.problems_label if provider else f"custom ({task_of(result).title} format)"


def layer_table(meta: Mapping[str, Any]) -> str:
    protected = set(meta["pruning_config"].get("protected_layers") or [])
    rows = [
        "| layer | FFN channels kept | query heads kept | KV groups kept | note |",
        "|---:|---:|---:|---:|---|",
    ]
    for lp, dense in zip(meta["plan"]["layers"], meta["dense_widths"]):
        index = lp.get("layer", len(rows) - 2)

        def cell(kept: int, total: int) -> str:
            return f"{kept} / {total} ({100 * kept / total:.0f}%)" if total else f"{kept} / {total}"

        rows.append(
            f"| {index} | {cell(lp['intermediate_size'], dense['intermediate_size'])} | "
            f"{cell(lp['num_attention_heads'], dense['num_attention_heads'])} | "
            f"{cell(lp['num_key_value_heads'], dense['num_key_value_heads'])} | "
            f"{'protected' if index in protected else ''} |"
        )
    return "\n".join(rows)


def eval_section(
    meta: Mapping[str, Any],
    pruned: Mapping[str, Any] | None,
    dense: Mapping[str, Any] | None,
    base_label: str,
    recovered: bool = False,
) -> str:
    """The GSM8K table: this model (pruned, or `recovered`: LoRA merged into its weights) beside the dense base."""
    if pruned is None and dense is None:
        return (
            "## Evaluation\n\nNot evaluated yet. `optimum-cli rku eval --model <this checkpoint>` runs GSM8K "
            "(lm-evaluation-harness conventions) and stores the result in `eval_results.json`; the card picks it up."
        )
    reference = pruned or dense
    task = task_of(reference)
    rows = [
        "| model | problems | split | n-shot | " + " | ".join(m.label for m in task.metrics) + " |",
        "|---|---|---|---:|" + "---:|" * len(task.metrics),
    ]
    plain = "pruned + LoRA recovery, merged" if recovered else "pruned"
    evaluated = EVALUATED_LABELS.get(str((pruned or {}).get("evaluated")), plain)  # an adapter checkpoint's: which
    for label, result in ((f"this model ({evaluated})", pruned), (f"dense base ({base_label})", dense)):
        if result is None:
            continue
        rows.append(
            f"| {label} | {problems_label(result, meta)}, {result['num_samples']} problems | {result['split']} | "
            f"{result['num_fewshot']} | " + " | ".join(percent(float(result[m.key]), 2) for m in task.metrics) + " |"
        )
    new_tokens = reference.get("max_new_tokens")
    notes = task.card_notes
    if new_tokens:
        notes += f" At most {new_tokens} new tokens per problem."
    return "## Evaluation\n\n" + "\n".join(rows) + "\n\n" + notes


def calibration_section(meta: Mapping[str, Any]) -> str:
    config = meta["pruning_config"]
    calibration = meta.get("calibration") or {}
    scoring = meta.get("scoring") or {}
    source = calibration.get("dataset")
    if not source and not calibration.get("num_samples"):
        return (
            f"## Calibration\n\nNone: `{config.get('importance')}` importance is data-free, so no calibration "
            "data was used."
        )
    if not source:  # checkpoints that recorded no source calibrated on their provider's default texts
        source = provider_for(metadata=meta).calibration_label
    items = [
        ("importance", config.get("importance")),
        ("objective", scoring.get("objective") or config.get("objective")),
        ("normalization", config.get("normalization")),
        ("calibration mode", config.get("calibration")),
        ("dataset", source_label(source)),
        ("dataset config / split", " / ".join(str(calibration[k]) for k in ("config", "split") if calibration.get(k))),
        ("text column", calibration.get("text_column")),
        ("samples", calibration.get("num_samples")),
        ("tokens", calibration.get("num_tokens")),
        ("max sequence length", calibration.get("max_length") or config.get("calibration_seq_len")),
        ("seed", calibration.get("seed", config.get("seed"))),
        ("scoring iterations", config.get("num_iterations")),
        ("fallback", calibration.get("fallback")),
        ("scoring time", f"{scoring['time_s']:.1f} s" if isinstance(scoring.get("time_s"), (int, float)) else None),
    ]
    lines = [f"- **{key}**: {value}" for key, value in items if value not in (None, "", [])]
    text = "## Calibration\n\n" + "\n".join(lines)
    if calibration.get("dataset") and "in-memory" in str(calibration["dataset"]):
        text += "\n\nThe calibration texts were passed in memory; the exact set is not recorded in this checkpoint."
    return text


def recovery_data(recovery: Mapping[str, Any]) -> dict[str, Any]:
    data = recovery.get("data")
    return dict(data) if isinstance(data, Mapping) else {}


def recovery_section(recovery: Mapping[str, Any]) -> str:
    """Settings and outcome of the LoRA recovery, from the "recovery" section that `recover_with_lora` records."""
    r = dict(recovery)
    data = recovery_data(r)
    described: list[tuple[str, Any]] = []

    def add(label: str, value: Any, *keys: str) -> None:
        if all(r.get(k) is not None for k in keys):
            described.append((label, value() if callable(value) else value))
        used.update(keys)

    used: set[str] = {"data", "loss_history"}
    add("method", lambda: "LoRA" if r["method"] == "lora" else r["method"], "method")
    add(
        "LoRA rank / alpha / dropout",
        lambda: f"{r['rank']} / {r['alpha']} / {r['dropout']}",
        "rank",
        "alpha",
        "dropout",
    )
    add("target modules", lambda: ", ".join(map(str, r["target_modules"])), "target_modules")
    add("trainable parameters", lambda: human_count(r["trainable_parameters"]), "trainable_parameters")
    add("steps (epochs)", lambda: f"{r['steps']} ({r.get('epochs', 'n/a')})", "steps")
    used.add("epochs")
    add(
        "batch",
        lambda: (
            f"{r['per_device_batch_size']} per device x {r.get('gradient_accumulation_steps', 1)} accumulation "
            f"x {r.get('world_size', 1)} device(s)"
        ),
        "per_device_batch_size",
    )
    used.update({"gradient_accumulation_steps", "world_size"})
    add("learning rate", lambda: f"{r['learning_rate']} ({r.get('lr_scheduler', 'constant')})", "learning_rate")
    used.add("lr_scheduler")
    if data:
        parts = [str(source_label(data.get("dataset", "custom")))]
        if data.get("num_examples") is not None:
            parts.append(f"{data['num_examples']} examples")
        if data.get("num_response_tokens") is not None:
            parts.append(f"{data['num_response_tokens']} response tokens")
        described.append(("training data", ", ".join(parts)))
    add(
        "response-token loss before -> after",
        lambda: f"{r['loss_before']:.4f} -> {r['loss_after']:.4f}",
        "loss_before",
        "loss_after",
    )
    add("final training loss", lambda: f"{r['final_loss']:.4f}", "final_loss")
    used.add("train_loss")
    add("time", lambda: f"{r['time_s']:.1f} s", "time_s")
    distillation = r.get("distillation")
    if isinstance(distillation, Mapping):
        teacher = distillation.get("teacher")
        teacher = "the dense model it was pruned from" if teacher in (None, "dense") else source_label(teacher)
        described.append(
            (
                "distillation",
                f"from {teacher}: loss (1 - alpha) CE + alpha "
                f"T^2 KL, alpha {distillation.get('alpha')}, T {distillation.get('temperature')}",
            )
        )
    used.update({"distillation", "adapter", "merged"})  # the intro says merged or not; the adapter has its section
    for key, value in r.items():  # anything else recorded, scalars only
        if key not in used and isinstance(value, (str, int, float, bool)):
            described.append((key.replace("_", " "), value))
    rows = ["| setting | value |", "|---|---|"]
    rows += [f"| {label} | {str(value).replace('|', '/')} |" for label, value in described]
    if r.get("merged", True):
        intro = (
            "After pruning, accuracy was recovered with a short LoRA fine-tune whose adapters were merged into the "
            "weights (architecture and layer widths unchanged)."
        )
    else:
        intro = (
            "After pruning, accuracy was recovered with a short LoRA fine-tune. The adapter is kept separate: the "
            "weights at the top level are the pruned model before recovery (see below for loading both)."
        )
    tail = "\n\nThe loss history is recorded in `rku_config.json`." if r.get("loss_history") else ""
    return "## Recovery\n\n" + intro + "\n\n" + "\n".join(rows) + tail


def usage_section(meta: Mapping[str, Any], repo: str, remote_code: bool, title: str = "How to use") -> str:
    auto_kwargs = ", trust_remote_code=True" if remote_code else ""
    explanation = (
        "Layers keep different widths, so `config.json` uses transformers' `per_layer_config` and the repository "
        "ships a small self-contained `modeling_rku.py` (`auto_map`): load it with `trust_remote_code=True`, or "
        "without remote code through optimum-rku."
        if remote_code
        else "All layers keep the same widths, so this is a stock transformers checkpoint (smaller "
        "`intermediate_size` / head counts); optimum-rku is not needed to load it."
    )
    return f"""## {title}

{explanation}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}"{auto_kwargs})
tokenizer = AutoTokenizer.from_pretrained("{repo}"{auto_kwargs})
```

With optimum-rku installed (`pip install optimum-rku`), either format loads without remote code:

```python
from optimum_rku import RKUModelForCausalLM

model = RKUModelForCausalLM.from_pretrained("{repo}")
```"""


def llamacpp_section(files: Sequence[Mapping[str, Any]], repo: str) -> str:
    """ "Use with llama.cpp": the exported GGUF files (tensor types, quantizer fallbacks) and the lines that run them."""
    rows = "\n".join(
        f"| `{f['file']}` | {f['dtype']} | {type_counts(f.get('types') or {})} | `{f['architecture']}`"
        + (" (per-layer widths)" if f.get("per_layer") else "")
        + " |"
        for f in files
    )
    quantized = [f for f in files if f.get("fallbacks")]
    first = (quantized or files)[0]["file"]
    per_layer = any(f.get("per_layer") for f in files)
    flash = " -fa on" if per_layer else ""
    hub = (
        ""
        if repo.startswith("<")
        else f'llama-cli -hf {repo} --hf-file {first} -p "Question: ...\\nAnswer:" -n 256{flash}\n# or, with the file downloaded:\n'
    )
    fallbacks = "".join(
        f"\n\nllama.cpp's quantizer on `{f['file']}`:\n\n" + "\n".join(f"- {line}" for line in f["fallbacks"])
        for f in quantized
    )
    note = (
        "\n\nFiles marked *per-layer widths* use llama.cpp's `deci` architecture, which builds every layer with its own "
        "FFN width and head counts; runtimes built on a llama.cpp too old to know `deci` cannot load them. With "
        "unequal KV widths llama.cpp pads the V cache to the widest layer unless flash attention is on (`-fa on`)."
        if per_layer
        else ""
    )
    return f"""## Use with llama.cpp

| file | weights | tensor types | llama.cpp architecture |
|---|---|---|---|
{rows}{fallbacks}

```bash
{hub}llama-cli -m {first} -p "Question: ...\\nAnswer:" -n 256{flash}
```

Ollama (`export gguf --modelfile` writes the `Modelfile` beside the file: `FROM ./{first}`, the model's chat
template, its stop tokens):

```bash
ollama create my-model -f Modelfile
ollama run my-model "Question: ..."
```{note}

Written with `optimum-rku export gguf --checkpoint <dir> --output <file.gguf> [--quantize q4_k_m] --modelfile`."""


def adapter_section(repo: str, remote_code: bool, folder: str) -> str:
    """ "Use the LoRA adapter": the top level is the adapter's base, the adapter (PEFT) is in `folder`."""
    auto_kwargs = ", trust_remote_code=True" if remote_code else ""
    return f"""## Use the LoRA adapter (PEFT)

The weights at the top level are the pruned model *before* recovery; the LoRA adapter trained on it is in
`{folder}/` (PEFT format). The adapter's `base_model_name_or_path` names that base without any machine path: this
repository's id once pushed, `..` (the folder above the adapter) in a local copy, so the whole folder can be moved,
copied or uploaded.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{repo}"{auto_kwargs})
model = PeftModel.from_pretrained(base, "{repo}", subfolder="{folder}")
tokenizer = AutoTokenizer.from_pretrained("{repo}"{auto_kwargs})
```

`model.merge_and_unload()` folds the adapter into the weights (a plain model of the same shape). Load in the two
steps above rather than with `AutoPeftModelForCausalLM`, which passes `subfolder` on to the base model too. With
optimum-rku installed, `optimum_rku.load_adapter_model("{repo}")` does both steps without remote code."""


def adapter_link_section(location: str, is_repo: bool) -> str:
    """ "LoRA adapter" of a merged checkpoint: where the adapter it was merged from lives, with its pruned base."""
    if is_repo:
        where = f"the repository [{location}](https://huggingface.co/{location})"
        how = "Its card shows how to load it with PEFT."
    else:
        where = f"the folder `{location}/` of this checkpoint (adapter in `{location}/adapter/`)"
        how = (
            "Its card shows how to load it with PEFT; `optimum-rku push --adapter-repo-id <repo>` publishes it "
            "beside this model."
        )
    return (
        "## LoRA adapter\n\nThe LoRA adapter merged into these weights is kept, together with the pruned model it was "
        f"trained on (its base), in {where}. {how}"
    )


def pruning_section(meta: Mapping[str, Any]) -> str:
    """ "Pruning": sizes before and after (parameters, prunable parameters, KV cache per token) and the strategy."""
    config, params, kv = meta["pruning_config"], meta["parameters"], meta.get("kv_cache") or {}
    achieved = params.get("achieved_sparsity", meta["plan"].get("achieved_sparsity"))
    before, after = params.get("total_before"), params.get("total_after")
    kv_before, kv_after = kv.get("bytes_per_token_before"), kv.get("bytes_per_token_after")
    size_rows = ["| | before | after | change |", "|---|---:|---:|---:|"]
    if before and after is not None:
        size_rows.append(
            f"| parameters | {human_count(before)} | {human_count(after)} | {percent(after / before - 1)} |"
        )
    if params.get("prunable_before"):
        pb, pa = params["prunable_before"], params.get("prunable_after", 0)
        size_rows.append(
            f"| prunable parameters (attention q/k/v/o + MLP gate/up/down) | {human_count(pb)} | {human_count(pa)} | "
            f"{percent(pa / pb - 1)} |"
        )
    if kv_before:
        size_rows.append(
            f"| KV cache per token | {human_bytes(kv_before)} | {human_bytes(kv_after or 0)} | {percent((kv_after or 0) / kv_before - 1)} |"
        )
    ranking = meta["plan"].get("ranking")
    priced = config.get("kv_cache_tokens") and ranking in ("per_parameter", "expected_loss", "measured_loss")
    pool = (
        f" (ranking: {ranking or config.get('ranking', 'score')}"
        + (f", KV cache priced at {config['kv_cache_tokens']} tokens" if priced else "")
        + ")"
        if config.get("allocation") == "global"
        else ""
    )
    strategy = [
        f"- **target sparsity**: {percent(config.get('sparsity'))} of prunable parameters; **achieved**: {percent(achieved, 2)}",
        f"- **KV-cache reduction**: {percent(kv.get('reduction'))}",
        f"- **structures**: {config.get('targets')} (attention unit: {config.get('attention_granularity')}), "
        f"**allocation**: {config.get('allocation')}{pool}, **min keep**: {config.get('min_keep')}"
        + (f" (attention: {config['min_keep_attention']})" if config.get("min_keep_attention") is not None else "")
        + f", **round to**: {config.get('round_to')}",
    ]
    attention = meta.get("attention") or {}
    if attention.get("kv_groups_before"):
        strategy.insert(
            2,
            f"- **attention removed**: {attention['query_heads_before'] - attention['query_heads_after']} of "
            f"{attention['query_heads_before']} query heads ({percent(attention['query_heads_removed_fraction'])}), "
            f"{attention['kv_groups_before'] - attention['kv_groups_after']} of {attention['kv_groups_before']} "
            f"KV groups ({percent(attention['kv_groups_removed_fraction'])})",
        )
    if config.get("protected_layers"):
        strategy.append(f"- **protected layers**: {', '.join(str(x) for x in config['protected_layers'])}")
    return "## Pruning\n\n" + "\n".join(size_rows) + "\n\n" + "\n".join(strategy)
