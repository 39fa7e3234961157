"""Model classes for pruned checkpoints whose layers have different widths (transformers' `per_layer_config`).

This file is self-contained on purpose: optimum-rku copies it into every non-uniform checkpoint and points
`auto_map` at it, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works where optimum-rku is
not installed. Each class builds the stock model, then rebuilds every decoder layer from its own layer config.
"""

from transformers import (
    Gemma2ForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)


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
    def __init__(self, config):
        _build_heterogeneous(LlamaForCausalLM, self, config)


class RKUQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config):
        _build_heterogeneous(Qwen2ForCausalLM, self, config)


class RKUMistralForCausalLM(MistralForCausalLM):
    def __init__(self, config):
        _build_heterogeneous(MistralForCausalLM, self, config)


class RKUQwen3ForCausalLM(Qwen3ForCausalLM):
    def __init__(self, config):
        _build_heterogeneous(Qwen3ForCausalLM, self, config)


class RKUGemma2ForCausalLM(Gemma2ForCausalLM):
    def __init__(self, config):
        _build_heterogeneous(Gemma2ForCausalLM, self, config)


MODEL_CLASSES = {
    "llama": RKULlamaForCausalLM,
    "qwen2": RKUQwen2ForCausalLM,
    "mistral": RKUMistralForCausalLM,
    "qwen3": RKUQwen3ForCausalLM,
    "gemma2": RKUGemma2ForCausalLM,
}
