"""Which kernels the GPU runs: attention backend and a fused LoRA update (helpers.fast_orpo, helpers.scoring).

Neither changes the math; both were found by profiling a Mistral-7B-shaped QLoRA step on an H100
(`benchmarks/orpo_speed.py --profile-steps 3`), and `benchmarks/` measures what each is worth.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch

# SDPA backends, in PyTorch's order of preference, minus cuDNN: on an H100 PyTorch picks cuDNN attention first, and
# cuDNN builds a new plan for every new sequence length (~3 ms of CPU per call, measured), which with length-varying
# batches left the GPU idle 40% of a training step. Flash (and mem-efficient) attention need no plan.
ATTENTION_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


@contextmanager
def attention_backends(names=ATTENTION_BACKENDS):
    """Restrict PyTorch's scaled_dot_product_attention to `names` (SDPBackend members) inside the block."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, n) for n in names]):
        yield


# ----------------------------------------------------------------------------------------------- fused LoRA


def _fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """base(x) + scaling * B(A(x)) as ONE addmm (the scale and the add happen in the matmul's epilogue).

    PEFT's LoRA forward clones the 4-bit layer's output, multiplies B(A(x)) by `scaling` and adds the two: three
    passes over a [tokens, out_features] tensor (out = 14,336 for Mistral's MLP) per layer, plus one more in the
    backward, for a rank-16 update. Falls back to PEFT's own forward for anything but the plain case (one active
    adapter, no dropout, no bias or variant (DoRA...), not merged, matching dtypes or autocast on).
    """
    stock = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return stock(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    if (name not in self.lora_A or name in getattr(self, "lora_variant", {})
            or not isinstance(self.lora_dropout[name], torch.nn.Identity)
            or self.lora_B[name].bias is not None):
        return stock(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name].weight
    autocast = torch.is_autocast_enabled(x.device.type)
    if not autocast and not (x.dtype == lora_a.weight.dtype == lora_b.dtype):
        return stock(self, x, *args, **kwargs)
    result = self.base_layer(x)
    if not autocast and result.dtype != lora_b.dtype:
        return stock(self, x, *args, **kwargs)
    a = lora_a(x)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), a.reshape(-1, a.shape[-1]), lora_b.t(),
                      alpha=self.scaling[name])
    return out.view(*result.shape[:-1], out.shape[-1])


def lora_layers(model) -> list[torch.nn.Module]:
    """PEFT LoRA linear layers (plain and bitsandbytes 4-bit) inside `model`."""
    from peft.tuners.lora import Linear

    kinds = [Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit  # defined only when bitsandbytes is installed
        kinds.append(Linear4bit)
    except ImportError:
        pass
    return [m for m in model.modules() if type(m) in kinds]


@contextmanager
def fused_lora(model, active: bool = True):
    """Inside the block, LoRA layers of `model` compute base + scaling * B(A(x)) with one addmm (see above)."""
    layers = lora_layers(model) if active else []
    for layer in layers:
        layer.forward = types.MethodType(_fused_lora_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


# ----------------------------------------------------------------------------------------------- Liger kernels


def apply_liger_kernels(model, **kernels: bool) -> str:
    """Liger's fused Triton kernels (e.g. rope=True, rms_norm=True, swiglu=True) patched into `model` in place, the
    way the Trainer applies them for `use_liger_kernel=True` (notebook 05: scoring then runs the kernels notebook 04
    trained with; measured 1.19x faster scoring on an H100, benchmarks/README.md). Returns what was done, for print.
    Same math; the fused kernels round differently in bf16."""
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return "use_liger_kernel is on but liger-kernel is not installed: scoring without it (requirements-gpu.txt)"
    from liger_kernel.transformers import _apply_liger_kernel_to_instance  # what transformers' Trainer calls

    _apply_liger_kernel_to_instance(model=model, **kernels)
    return f"Liger kernels on the model, as in training: {', '.join(k for k, on in kernels.items() if on)}"
