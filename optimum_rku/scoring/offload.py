"""Scoring offloaded models in bounded memory: autograd keeps a handle to each streamed-in weight, not the weight.

With accelerate offload (`device_map` with "cpu" / "disk"), a module's weights are loaded onto the execution device
just before its forward and dropped right after. A linear layer with a frozen weight still saves that weight for
backward (to form the input gradient), so without help every streamed-in weight stays alive until backward and the
offload saves nothing. `stream_offloaded_weights` installs saved-tensor hooks that replace such a weight by a handle
(its offload store and name, plus the view geometry) and reload it from the store when backward needs it: the
peak then holds the weights of the module being run, as offload promises, at the price of one more load per weight.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class _WeightHandle:
    """Where to reload a saved offloaded weight from, and which view of it autograd saved."""

    store: Any  # the hook's weights_map (CPU state dict or disk loader), keyed by `name`
    name: str
    size: torch.Size
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    device: torch.device

    def load(self) -> torch.Tensor:
        weight = self.store[self.name].to(device=self.device, dtype=self.dtype)
        return weight.as_strided(self.size, self.stride, self.offset)


def offload_hooks(model: torch.nn.Module) -> list[Any]:
    """The accelerate hooks of `model` whose module weights are offloaded and streamed in per forward."""
    found = []
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for one in getattr(hook, "hooks", None) or [hook]:  # SequentialHook holds several
            if getattr(one, "offload", False) and getattr(one, "weights_map", None) is not None:
                found.append(one)
    return found


def check_no_weight_gradients(model: torch.nn.Module, importance) -> None:
    """Weight-gradient importances (Taylor) cannot run on offloaded weights: each forward loads fresh copies."""
    if importance.needs_weight_gradients and offload_hooks(model):
        raise ValueError(
            f"importance {importance.name!r} needs weight gradients, which an accelerate-offloaded model cannot keep "
            "(its offloaded weights are reloaded for every forward and dropped after it); allowed with offload: "
            "importances without weight gradients (e.g. 'rku', 'wanda', 'flap', 'magnitude'), or load the model "
            "without offload."
        )


@contextmanager
def stream_offloaded_weights(model: torch.nn.Module):
    """Inside this context, autograd saves offloaded frozen weights as handles and reloads them in backward.

    A no-op for models without offload. Weights that require grad are saved as usual (their gradient needs them).
    """
    hooks = offload_hooks(model)
    if not hooks:
        yield
        return
    loaded: dict[int, tuple[Any, str]] = {}  # storage address of a streamed-in weight -> (store, name)
    originals = []

    def wrap(hook):
        pre, post = hook.pre_forward, hook.post_forward

        def pre_forward(module, *args, **kwargs):
            out = pre(module, *args, **kwargs)
            for name, param in module.named_parameters(recurse=bool(hook.place_submodules)):
                if param.device.type != "meta":
                    loaded[param.untyped_storage().data_ptr()] = (hook.weights_map, name)
            return out

        def post_forward(module, output):
            for _name, param in module.named_parameters(recurse=bool(hook.place_submodules)):
                if param.device.type != "meta":
                    loaded.pop(param.untyped_storage().data_ptr(), None)
            return post(module, output)

        originals.append((hook, pre, post))
        hook.pre_forward, hook.post_forward = pre_forward, post_forward

    def pack(tensor: torch.Tensor):
        if tensor.requires_grad or tensor.layout != torch.strided or tensor.device.type == "meta":
            return tensor
        where = loaded.get(tensor.untyped_storage().data_ptr())
        if where is None:
            return tensor
        store, name = where
        return _WeightHandle(
            store, name, tensor.size(), tensor.stride(), tensor.storage_offset(), tensor.dtype, tensor.device
        )

    def unpack(saved):
        return saved.load() if isinstance(saved, _WeightHandle) else saved

    for hook in hooks:
        wrap(hook)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for hook, pre, post in originals:
            hook.pre_forward, hook.post_forward = pre, post
        loaded.clear()
