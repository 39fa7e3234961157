"""`RKUPruner`: the entry point. calibrate -> score -> allocate -> remove -> save, one obvious verb: `prune`.

Each call resolves its configuration once (`pruning.run.resolve_run`: the validated config and its importance
object) and hands those objects down the pipeline: calibration (`data.calibration`), scoring (`scoring`), allocation
and removal (`pruning`), saving (`io.checkpoint`). A model's default data comes from its data provider
(`data.providers`), never from a check on which model it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from optimum.quantization_base import OptimumQuantizer

from optimum_rku.config import RKUConfig
from optimum_rku.data.calibration import count_tokens, load_texts, resolve_calibration, tokenize_texts
from optimum_rku.data.gsm8k import GSM8K_HUB_ID
from optimum_rku.data.providers import METADATA_KEY, DataProvider, get_provider, provider_for
from optimum_rku.hub.labels import hub_model_id, portable_source
from optimum_rku.io.checkpoint import check_save_dir, save_checkpoint
from optimum_rku.models.blocks import head_dim_of
from optimum_rku.models.geometry import kv_cache_bytes_per_token, layer_widths, prunable_parameters
from optimum_rku.models.masks import combine_masks, plan_masks
from optimum_rku.models.specs import check_supported
from optimum_rku.pruning.allocation import PruningPlan, allocate
from optimum_rku.pruning.removal import apply_plan
from optimum_rku.pruning.run import PruningRun, check_scores, resolve_run
from optimum_rku.scoring import NonFiniteError, PruningScores, compute_scores
from optimum_rku.scoring.compute import zero_scores
from optimum_rku.version import __version__

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


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int.")


class RKUPruner(OptimumQuantizer):
    """Structured pruning of a causal LM: `RKUPruner.from_pretrained(model_id).prune()` returns a smaller model.

    `data` is the model's data provider (or its name): where default calibration texts and recovery pairs come from;
    by default the provider that claims `source` (the bundled testbed claims itself), else GSM8K.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        source: str | os.PathLike | None = None,
        data: DataProvider | str | None = None,
    ):
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"RKUPruner needs a transformers PreTrainedModel, got {type(model).__name__}.")
        check_supported(model.config)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source if source is not None else getattr(model.config, "_name_or_path", None) or None
        self.data = get_provider(data) if data is not None else provider_for(self.source)
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
        or a packaged model's name, "smollm2" / "qwen2.5-coder-0.5b": `io.packaged`) is dequantized and saves as a
        normal checkpoint.
        """
        from transformers import PreTrainedModel

        if isinstance(model_or_path, PreTrainedModel):
            if model_kwargs:
                raise TypeError(
                    f"Loading arguments {sorted(model_kwargs)} only apply when loading; the model is already loaded."
                )
            name = getattr(model_or_path.config, "_name_or_path", None) or None
            if tokenizer is None and name and Path(name).is_dir():
                from optimum_rku.io.checkpoint import load_tokenizer

                try:
                    tokenizer = load_tokenizer(name)
                except (OSError, ValueError):
                    tokenizer = None
            return cls(model_or_path, tokenizer)
        from optimum_rku.io.loading import load_pretrained

        loaded = load_pretrained(
            model_or_path,
            tokenizer=tokenizer,
            torch_dtype=torch_dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            **model_kwargs,
        )
        return cls(loaded.model, loaded.tokenizer, source=loaded.source, data=loaded.data)

    # ------------------------------------------------------------------ calibration
    def get_calibration_dataset(
        self, dataset_name: str | Sequence[str] = GSM8K_HUB_ID, *, max_length: int = 256, **options: Any
    ):
        """Tokenized calibration `datasets.Dataset` (GSM8K train questions by default; local files or a list too).

        `options` are those of `optimum_rku.data.calibration.load_texts`: `num_samples` (128), `dataset_config_name`,
        `dataset_split`, `text_column`, `data_files`, `seed`, `preprocess_function`.
        """
        texts, summary = load_texts(dataset_name, **options)
        dataset = tokenize_texts(self._require_tokenizer(), texts, max_length)
        summary["num_tokens"] = count_tokens(dataset)
        summary["max_length"] = max_length
        self.calibration_summary = summary
        return dataset

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("This pruner has no tokenizer: pass tokenizer=... to RKUPruner.from_pretrained.")
        return self.tokenizer

    def _calibration(self, run: PruningRun, calibration_dataset, masks: dict | None = None):
        """The run's tokenized calibration set and summary (none for data-free importances)."""
        if not run.importance.needs_calibration:
            return None, {}
        return resolve_calibration(
            calibration_dataset,
            run.config,
            model=self.model,
            tokenizer=self.tokenizer,
            data=self.data,
            summary=self.calibration_summary,
            masks=masks,
        )

    # ------------------------------------------------------------------ scoring
    def _resolve(self, pruning_config: Any) -> PruningRun:
        return resolve_run(pruning_config, self.model, self.tokenizer, len(self.dense_widths))

    def compute_scores(
        self,
        pruning_config: RKUConfig | None = None,
        calibration_dataset=None,
        batch_size: int = 1,
        progress: bool = True,
    ) -> PruningScores:
        """Score every FFN channel and attention structure once; reuse the result for several sparsities."""
        run = self._resolve(pruning_config)
        _check_batch_size(batch_size)
        self.scores = self._score(run, calibration_dataset, batch_size, progress)
        return self.scores

    def _score(self, run: PruningRun, calibration_dataset, batch_size: int, progress: bool) -> PruningScores:
        dataset, summary = self._calibration(run, calibration_dataset)
        with self._naming_offending_text(dataset):
            return compute_scores(
                self.model,
                run.config,
                dataset,
                batch_size,
                calibration_summary=summary,
                progress=progress,
                importance=run.importance,
            )

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
        run = self._resolve(pruning_config)
        _check_batch_size(batch_size)
        if save_dir is not None:
            check_save_dir(save_dir, self.source, overwrite)
        if scores is not None:
            if not isinstance(scores, PruningScores):
                kind = type(scores).__name__
                raise TypeError(f"scores must be PruningScores (e.g. PruningScores.load(path)), got {kind}.")
            run = run.with_scores(scores)
            check_scores(scores, run.config, self.dense_widths, self.model)
            if scores.head_dim is None:  # scores saved by an older version: the widths matched, so head_dim does too
                scores = dataclasses.replace(scores, head_dim=head_dim_of(self.model.config))
        config = run.config
        start = time.perf_counter()
        prunable = prunable_parameters(self.model)
        if config.sparsity == 0:
            plan = allocate(scores or zero_scores(self.model, config), config, prunable)
        elif scores is not None or config.num_iterations == 1:
            if scores is None:
                scores = self._score(run, calibration_dataset, batch_size, progress)
            plan = allocate(scores, config, prunable)
        else:
            plan, scores = self._iterative(run, calibration_dataset, batch_size, progress)
        self.scores, self.plan, self.pruning_config = scores, plan, config
        if config.bias_compensation:  # (at sparsity 0 the plan removes nothing, so nothing is compensated)
            apply_plan(self.model, plan, scores.mlp_input_mean, scores.attention_input_mean)
        else:
            apply_plan(self.model, plan)
        self.prune_time_s = time.perf_counter() - start
        logger.info("Scored and pruned in %.1f s", self.prune_time_s)
        if save_dir is not None:
            self.save_pretrained(save_dir, overwrite=overwrite)
        return self.model

    def quantize(self, save_dir: str | os.PathLike | None = None, **kwargs):
        """Alias of `prune` (Optimum's OptimumQuantizer verb)."""
        return self.prune(save_dir=save_dir, **kwargs)

    def _iterative(self, run: PruningRun, calibration_dataset, batch_size: int, progress: bool):
        """Re-score on the masked model between steps; each step's mask contains the previous one."""
        config, masks = run.config, None
        prunable = prunable_parameters(self.model)
        dataset, summary = self._calibration(run, calibration_dataset)
        # self-generated traces are rewritten by the partially pruned model before every later step
        regenerate = (
            dataset is not None
            and config.calibration == "self_generated"
            and (calibration_dataset is None or isinstance(calibration_dataset, (list, tuple)))
        )
        scores = plan = None
        for step in range(1, config.num_iterations + 1):
            step_config = dataclasses.replace(config, sparsity=config.sparsity * step / config.num_iterations)
            if regenerate and step > 1:
                dataset, summary = self._calibration(run, calibration_dataset, masks=masks)
                summary["regenerated_per_iteration"] = True
            previous = scores
            with self._naming_offending_text(dataset):
                scores = compute_scores(
                    self.model, step_config, dataset, batch_size, masks, summary, progress, importance=run.importance
                )
            if config.bias_compensation and previous is not None:
                _keep_means_of_removed(scores, previous, masks)
            plan = allocate(scores, step_config, prunable)
            masks = combine_masks(masks, plan_masks(self.model, plan))
        return plan, scores

    @contextlib.contextmanager
    def _naming_offending_text(self, dataset):
        """A NaN / inf stop that names calibration rows also quotes the text of the first one (to drop it)."""
        try:
            yield
        except NonFiniteError as err:
            if dataset is None or not err.rows or self.tokenizer is None or err.rows[0] >= len(dataset):
                raise
            text = self.tokenizer.decode(dataset[err.rows[0]]["input_ids"], skip_special_tokens=True)
            text = " ".join(text.split())
            quoted = repr(text[:80] + ("..." if len(text) > 80 else ""))
            raise NonFiniteError(
                f"{err} Calibration row {err.rows[0]} reads {quoted}.",
                layer=err.layer,
                statistic=err.statistic,
                rows=err.rows,
            ) from None

    # ------------------------------------------------------------------ saving
    def metadata(self) -> dict[str, Any]:
        """Everything `rku_config.json` records: config, per-layer kept structures, parameter counts, calibration."""
        if self.plan is None or self.pruning_config is None:
            raise ValueError("Nothing to describe yet: call prune() first.")
        total_after = sum(p.numel() for p in self.model.parameters())
        kv_after = kv_cache_bytes_per_token(self.model)
        return {
            "optimum_rku_version": __version__,
            **portable_source(self.source),  # a Hub id or alias, else the folder name and a content hash
            METADATA_KEY: self.data.name,
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
            # no wall time here: the same model, config and seed give a byte-identical rku_config.json (the time is
            # logged and kept in `pruner.prune_time_s`)
            "scoring": {
                "importance": self.pruning_config.importance,
                "objective": self.scores.objective if self.scores is not None else None,
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

        `teacher="dense"` reloads the model this pruner started from and distils it into the pruned one. With
        `merge=True` the merged model becomes `pruner.model`; with `merge=False` the returned `PeftModel` is base +
        adapter and `pruner.model` stays the pruned model before recovery (the adapter's base, sharing its weights),
        which is what `save_pretrained` then saves. Wall times are in `pruner.recovery_summary`, not in checkpoints.
        """
        from optimum_rku.recovery import recover_with_lora

        meta = self.metadata()  # raises a clear error before any work if prune() has not run
        kwargs.setdefault("seed", self.pruning_config.seed)
        if isinstance(kwargs.get("teacher"), str):
            kwargs["teacher"] = self._dense_teacher(kwargs["teacher"])
            kwargs.setdefault("teacher_name", hub_model_id(self.source) or "dense")  # never a machine path
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
            data=self.data,
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
        """Save the pruned model, tokenizer, `rku_config.json`, card and chart atomically into `save_dir`."""
        from optimum_rku.hub.card import checkpoint_writers

        meta = self.metadata()
        path = save_checkpoint(
            self.model,
            self.tokenizer,
            save_dir,
            meta,
            source=self.source,
            overwrite=overwrite,
            writers=checkpoint_writers(meta),
        )
        logger.info("Saved pruned model to %s", path)
        return path

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Save to a temporary directory and upload it; returns the commit URL.

        `options` are those of `optimum_rku.hub.upload.push_to_hub`: `private`, `token`, `eval_results`,
        `commit_message`, `create_pr`.
        """
        import tempfile

        from optimum_rku.hub.upload import check_repo_id, push_to_hub

        check_repo_id(repo_id)  # before the (possibly long) save
        with tempfile.TemporaryDirectory(prefix="optimum-rku-push-") as tmp:
            return push_to_hub(self.save_pretrained(Path(tmp) / "checkpoint"), repo_id, **options)


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
