"""Model classes for pruned checkpoints whose layers have different widths (transformers' `per_layer_config`).

This file is self-contained on purpose: optimum-rku copies it into every non-uniform checkpoint and points
`auto_map` at it, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works where optimum-rku is
not installed. Each class builds the stock model, then rebuilds every decoder layer from its own layer config.
The config classes only relax the stock "hidden_size must be a multiple of num_attention_heads" check, which
does not hold for pruned models (head_dim stays explicit while heads are removed).
"""

from huggingface_hub.dataclasses import strict
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)


def _validate_heads(config) -> None:
    """Pruned layers may keep any head count (head_dim is explicit); query heads must split evenly over KV heads."""
    layers = config.per_layer_config if getattr(config, "is_heterogeneous", False) else [config]
    for index, layer in enumerate(layers):
        heads, kv_heads = layer.num_attention_heads, layer.num_key_value_heads
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"Layer {index}: {heads} query heads do not split evenly over {kv_heads} KV heads.")


@strict
class RKULlamaConfig(LlamaConfig):
    def validate_architecture(self):
        _validate_heads(self)


@strict
class RKUQwen2Config(Qwen2Config):
    def validate_architecture(self):
        _validate_heads(self)


@strict
class RKUMistralConfig(MistralConfig):
    def validate_architecture(self):
        _validate_heads(self)


@strict
class RKUQwen3Config(Qwen3Config):
    def validate_architecture(self):
        _validate_heads(self)


@strict
class RKUGemma2Config(Gemma2Config):
    def validate_architecture(self):
        _validate_heads(self)


def _build_heterogeneous(model_cls, self, config) -> None:
    heterogeneous = getattr(config, "is_heterogeneous", False)
    if heterogeneous:
        config.allow_global_per_layer_attribute_access = True
    try:
        model_cls.__init__(self, config)
    finally:
        config.__dict__.pop("allow_global_per_layer_attribute_access", None)
    if heterogeneous:
        layers = self.model.layers
        for index, layer in enumerate(layers):
            layers[index] = type(layer)(config.per_layer_config[index], index)


class RKULlamaForCausalLM(LlamaForCausalLM):
    config_class = RKULlamaConfig

    def __init__(self, config):
        _build_heterogeneous(LlamaForCausalLM, self, config)


class RKUQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = RKUQwen2Config

    def __init__(self, config):
        _build_heterogeneous(Qwen2ForCausalLM, self, config)


class RKUMistralForCausalLM(MistralForCausalLM):
    config_class = RKUMistralConfig

    def __init__(self, config):
        _build_heterogeneous(MistralForCausalLM, self, config)


class RKUQwen3ForCausalLM(Qwen3ForCausalLM):
    config_class = RKUQwen3Config

    def __init__(self, config):
        _build_heterogeneous(Qwen3ForCausalLM, self, config)


class RKUGemma2ForCausalLM(Gemma2ForCausalLM):
    config_class = RKUGemma2Config

    def __init__(self, config):
        _build_heterogeneous(Gemma2ForCausalLM, self, config)


CONFIG_CLASSES = {
    "llama": RKULlamaConfig,
    "qwen2": RKUQwen2Config,
    "mistral": RKUMistralConfig,
    "qwen3": RKUQwen3Config,
    "gemma2": RKUGemma2Config,
}

MODEL_CLASSES = {
    "llama": RKULlamaForCausalLM,
    "qwen2": RKUQwen2ForCausalLM,
    "mistral": RKUMistralForCausalLM,
    "qwen3": RKUQwen3ForCausalLM,
    "gemma2": RKUGemma2ForCausalLM,
}
