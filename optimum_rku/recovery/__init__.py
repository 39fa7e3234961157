"""LoRA recovery of pruned models: a short supervised fine-tune that wins back most of the accuracy pruning cost.

`recover_with_lora` wraps a (pruned) causal LM in PEFT LoRA adapters on every attention and MLP projection, trains
them with `transformers.Trainer` on prompt/response data (loss on the response tokens only), then merges them back
so the result is a plain model of the pruned shape (or keeps the adapter, with the pruned model it was trained on,
as an adapter checkpoint: `optimum_rku.io.adapter`). Because training runs through `Trainer`, `accelerate launch`
(DDP, FSDP, DeepSpeed) works unchanged. With `teacher=` (the dense model) the loss distils the teacher's next-token
distribution into the pruned model on the response tokens; the teacher is frozen and placed on each training device
(not sharded under FSDP / DeepSpeed). `data` builds the training rows, `losses` the probe and distillation losses,
`training` the adapters, the trainer and the staged save.

Defaults (every one can be overridden through `lora_config` / `training_args`):

* LoRA: r=16, alpha=32, dropout=0.05, `target_modules` = every attention and MLP projection module (the family's
  spec: q/k/v/o_proj and gate/up/down_proj, or Phi-3's fused qkv_proj / gate_up_proj). PEFT builds each
  adapter from its own layer's shape, so non-uniform (global) pruned models get adapters of their own widths.
* Training: max_steps=200, per-device batch 8, gradient accumulation 1, learning rate 2e-4, cosine schedule with 5%
  warmup, no weight decay, bf16 when a CUDA device supports it, seed 2016, logging every 10 steps, `report_to="none"`,
  `save_strategy="no"` (no checkpoints during training), `output_dir` a temporary directory removed afterwards.
* Data: the recovery pairs of the model's data provider (`optimum_rku.data.providers`: GSM8K train, question +
  worked answer, from the Hub (`openai/gsm8k`); the bundled testbed's train split for the testbed), or local files
  (`data_files=`). Question/answer rows are asked the way the model is asked: through the tokenizer's chat template
  when it has one (prompt = the user turn and generation prompt, response = the answer + eos;
  `chat_template="auto"`), else as `Question: q\nAnswer: a`.
"""

from optimum_rku.recovery.data import (
    IGNORE_INDEX,
    RecoveryCollator,
    prepare_recovery_dataset,
    recovery_questions,
    self_distillation_dataset,
)
from optimum_rku.recovery.losses import distillation_loss, response_loss
from optimum_rku.recovery.training import (
    RecoveryOptions,
    default_bf16,
    default_lora_config,
    recover_with_lora,
    resolve_training_args,
)

__all__ = [
    "IGNORE_INDEX",
    "RecoveryCollator",
    "RecoveryOptions",
    "default_bf16",
    "default_lora_config",
    "distillation_loss",
    "prepare_recovery_dataset",
    "recover_with_lora",
    "recovery_questions",
    "resolve_training_args",
    "response_loss",
    "self_distillation_dataset",
]
