"""Model classes for pruned checkpoints whose layers have different widths (transformers' `per_layer_config`).

This file is self-contained on purpose: optimum-rku copies it into every such checkpoint and points `auto_map` at
it, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works where optimum-rku is not installed.
It names no family: `RKU<X>` is built on first use from transformers' class `<X>`, and the checkpoint's `auto_map`
names the two it needs (optimum-rku writes them from its architecture spec, e.g. `RKULlamaConfig` and
`RKULlamaForCausalLM`). A model class builds the stock model, then rebuilds every decoder layer from its own layer
config. A config class only relaxes the stock checks that assume head_dim = hidden_size / num_attention_heads, which
pruning breaks (head_dim stays explicit while heads are removed); query heads must still split over KV heads.
"""

import copy

import transformers
from huggingface_hub.dataclasses import strict

PREFIX = "RKU"
_BUILT = {}


def _validate_heads(config) -> None:
    """Pruned layers may keep any head count (head_dim is explicit); query heads must split evenly over KV heads."""
    layers = config.per_layer_config if getattr(config, "is_heterogeneous", False) else [config]
    for index, layer in enumerate(layers):
        heads, kv_heads = layer.num_attention_heads, layer.num_key_value_heads
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"Layer {index}: {heads} query heads do not split evenly over {kv_heads} KV heads.")


def _as_dense(config):
    """A shallow copy whose head count gives hidden_size / num_attention_heads = head_dim, as stock checks assume."""
    head_dim = getattr(config, "head_dim", None)
    if not head_dim or config.hidden_size % head_dim:
        return config
    dense = copy.copy(config)
    dense.__dict__.pop("_heterogeneity_spec", None)
    dense.__dict__["num_attention_heads"] = config.hidden_size // head_dim
    return dense


def _config_class(stock):
    def validate_architecture(self):
        _validate_heads(self)

    members = {
        "__module__": __name__,
        "__doc__": f"{stock.__name__} for pruned layers.",
        "validate_architecture": validate_architecture,
    }
    if hasattr(stock, "validate_rope"):  # e.g. Phi-3 sizes its RoPE factors by hidden_size / num_attention_heads

        def validate_rope(self):
            stock.validate_rope(_as_dense(self))

        members["validate_rope"] = validate_rope
    return strict(type(PREFIX + stock.__name__, (stock,), members))


def _model_class(stock):
    def __init__(self, config):
        heterogeneous = getattr(config, "is_heterogeneous", False)
        if heterogeneous:
            config.allow_global_per_layer_attribute_access = True
        try:
            stock.__init__(self, config)
        finally:
            config.__dict__.pop("allow_global_per_layer_attribute_access", None)
        if heterogeneous:
            layers = self.get_decoder().layers
            for index, layer in enumerate(layers):
                layers[index] = type(layer)(config.per_layer_config[index], index)
            # rotary modules recompute their frequencies from the whole-model config after loading and, for some
            # rotary types, per sequence length; they read the head count only as a fallback for head_dim (which
            # checkpoints always set), so their own copy may read global values
            for module in self.modules():
                if "RotaryEmbedding" in type(module).__name__ and getattr(module, "config", None) is config:
                    module.config = copy.copy(config)
                    module.config.allow_global_per_layer_attribute_access = True

    members = {
        "__module__": __name__,
        "__doc__": f"{stock.__name__} whose decoder layers follow `config.per_layer_config`.",
        "config_class": rku_class(stock.config_class.__name__),
        "__init__": __init__,
    }
    return type(PREFIX + stock.__name__, (stock,), members)


def rku_class(stock_name: str):
    """`RKU<stock_name>`: the relaxed config class or the per-layer model class built on transformers' `stock_name`."""
    if stock_name not in _BUILT:
        stock = getattr(transformers, stock_name)
        build = _config_class if issubclass(stock, transformers.PretrainedConfig) else _model_class
        _BUILT[stock_name] = build(stock)
    return _BUILT[stock_name]


def __getattr__(name):
    """`RKULlamaForCausalLM`, `RKUPhi3Config`, ...: the names `auto_map` uses, built on first access."""
    stock = name[len(PREFIX) :] if name.startswith(PREFIX) else None
    if stock and hasattr(transformers, stock):
        return rku_class(stock)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
