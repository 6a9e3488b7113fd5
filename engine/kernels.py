"""Which kernels the GPU runs: attention backend, LoRA layers as one autograd node each, Liger's kernels
(engine.fast_orpo, helpers.scoring).

None changes the math (tests/test_kernels.py compares each with PEFT's and PyTorch's own path, forward and
backward, in fp32 on a CPU, a 4-bit base included); each was found by profiling a Mistral-7B-shaped QLoRA step on an
H100 (`benchmarks/orpo_speed.py --profile-steps 3`), and `docs/performance.md` says what each is worth.
"""

from __future__ import annotations

import functools
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


# ----------------------------------------------------------------------------------------------- LoRA layers


def frozen_weight(base: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The frozen base weight [out, in] of a LoRA layer as a dense `dtype` tensor: a bitsandbytes 4-bit weight is
    dequantized (what bitsandbytes itself does before its matmul at training batch sizes), a plain nn.Linear weight
    is cast. Only for bases that `frozen_weight_kind` accepts."""
    if frozen_weight_kind(base) == "4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).to(dtype)
    return base.weight.detach().to(dtype)


def frozen_weight_kind(base: torch.nn.Module) -> str | None:
    """"4bit", "dense" or None (8-bit, a bias, anything else: PEFT's own forward runs).

    None too for a 4-bit weight that bitsandbytes has repacked for its CPU inference kernel: on a CPU with AVX512-BF16
    its first forward in eval mode without gradients rewrites the weight into a layout `dequantize_4bit` does not
    read (notebook 05 scores with the adapter off first, which triggered it: the tuned scores then came out wrong)."""
    weight = getattr(base, "weight", None)
    if weight is None or getattr(base, "bias", None) is not None:
        return None
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        return None if getattr(quant_state, "packing_format_for_cpu", False) else "4bit"
    return "dense" if type(base) is torch.nn.Linear else None


def _lora_forward(x2, weight, a_w, b_w, scaling):
    """y = x W^T + s (x A^T) B^T for 2-D x; also returns a = x A^T (the backward needs it)."""
    a = x2 @ a_w.t()
    y = (a * scaling) @ b_w.t()
    y.addmm_(x2, weight.t())  # the big matmul adds into y in its epilogue: no extra pass over [tokens, out]
    return y, a


def _lora_backward(ctx, g, x2, a, a_w, b_w, want: tuple[bool, bool, bool]):
    """Gradients of `_lora_forward` for the upstream gradient g [tokens, out]: (gx, dA, dB), each None unless
    `want`ed (input, A, B)."""
    ga = (g @ b_w) * ctx.scaling
    grad_a = (ga.t() @ x2).to(ctx.param_dtypes[0]) if want[1] else None
    grad_b = ((g.t() @ a) * ctx.scaling).to(ctx.param_dtypes[1]) if want[2] else None
    gx = None
    if want[0]:
        gx = ga @ a_w
        gx.addmm_(g, frozen_weight(ctx.base, ctx.dtype))  # again inside the big matmul
    return gx, grad_a, grad_b


class LoRALinear(torch.autograd.Function):
    """y = x W^T + s (x A^T) B^T as ONE autograd node, W frozen (4-bit or dense), A [r, in] and B [out, r] trained.

    Forward:  a = x A^T;  y = (s a) B^T;  y += x W^T   (the big matmul adds into y in its epilogue: no extra pass)
    Backward: ga = s (gy B);  dB = s gy^T a;  dA = ga^T x;  gx = ga A;  gx += gy W   (again inside the big matmul)
    Versus PEFT's layer (bitsandbytes matmul, a LoRA linear, scale, add: four autograd nodes, two weight casts
    under autocast and an [tokens, in] add for the input gradient) this launches fewer kernels, passes over the
    [tokens, out] output once instead of three times, and costs the CPU one node: on an H100 the CPU's autograd
    work for these small rank-16 ops left the GPU idle (benchmarks/orpo_speed.py --profile-steps).
    Saves x (the layer's input, kept anyway by whatever needs it), a [tokens, r] and the two small cast weights.
    """

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, base, scaling: float, dtype: torch.dtype):
        a_w, b_w = lora_a.to(dtype), lora_b.to(dtype)
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        y, a = _lora_forward(x2, frozen_weight(base, dtype), a_w, b_w, scaling)
        ctx.save_for_backward(x2, a, a_w, b_w)
        ctx.base, ctx.scaling, ctx.dtype, ctx.x_shape, ctx.x_dtype = base, scaling, dtype, x.shape, x.dtype
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy):
        x2, a, a_w, b_w = ctx.saved_tensors
        g = gy.reshape(-1, gy.shape[-1]).to(ctx.dtype)
        gx, grad_a, grad_b = _lora_backward(ctx, g, x2, a, a_w, b_w, ctx.needs_input_grad[:3])
        if gx is not None:
            gx = gx.view(ctx.x_shape).to(ctx.x_dtype)
        return gx, grad_a, grad_b, None, None, None


@functools.cache  # looked up once: it runs in every MLP's forward and backward
def _liger_swiglu():
    """Liger's fused SwiGLU kernels (forward, backward), or None (no liger-kernel, or no GPU)."""
    try:
        from liger_kernel.ops.swiglu import swiglu_backward, swiglu_forward
    except ImportError:
        return None
    return swiglu_forward, swiglu_backward


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, rounded as Liger's kernel rounds it (silu in fp32, cast, then the product)."""
    liger = _liger_swiglu() if gate.is_cuda else None
    if liger is not None:
        return liger[0](gate, up)[2]
    return torch.nn.functional.silu(gate.float()).to(up.dtype) * up


def silu_mul_backward(gate: torch.Tensor, up: torch.Tensor, grad: torch.Tensor):
    """(d gate, d up) of `silu_mul`; on the GPU Liger's kernel writes them into gate's and up's memory."""
    liger = _liger_swiglu() if gate.is_cuda else None
    if liger is not None:
        return liger[1](gate, up, grad)
    g32, grad32 = gate.float(), grad.float()
    sig = torch.sigmoid(g32)
    silu = g32 * sig
    return (grad32 * (silu * (1 - sig) + sig) * up.float()).to(gate.dtype), (grad32 * silu).to(up.dtype)


class SiluMulLoRALinear(torch.autograd.Function):
    """down(silu(gate) * up) for a LoRA `down` layer, as one node that does NOT keep silu(gate) * up.

    The MLP's product [tokens, 14,336 for Mistral] is the input `down` needs for its LoRA A gradient; kept, it is the
    largest single activation of a layer (~20% of one). The SwiGLU kernel keeps gate and up anyway, and the product
    costs one elementwise pass to recompute in the backward: this node keeps gate and up only. Measured on an H100
    (docs/performance.md): an un-checkpointed layer 2.71 -> 2.18 GiB at the longest batch, the step 1.7% slower at the
    same checkpointing; 20 checkpointed layers then fit where 22 did before."""

    @staticmethod
    def forward(ctx, gate, up, lora_a, lora_b, base, scaling: float, dtype: torch.dtype):
        a_w, b_w = lora_a.to(dtype), lora_b.to(dtype)
        gate2, up2 = gate.reshape(-1, gate.shape[-1]).to(dtype), up.reshape(-1, up.shape[-1]).to(dtype)
        y, a = _lora_forward(silu_mul(gate2, up2), frozen_weight(base, dtype), a_w, b_w, scaling)
        ctx.save_for_backward(gate2, up2, a, a_w, b_w)
        ctx.base, ctx.scaling, ctx.dtype, ctx.shape = base, scaling, dtype, gate.shape  # up has the same shape
        ctx.in_dtypes, ctx.param_dtypes = (gate.dtype, up.dtype), (lora_a.dtype, lora_b.dtype)
        return y.view(*gate.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy):
        gate2, up2, a, a_w, b_w = ctx.saved_tensors
        g = gy.reshape(-1, gy.shape[-1]).to(ctx.dtype)
        want_input = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        g_act, grad_a, grad_b = _lora_backward(ctx, g, silu_mul(gate2, up2), a, a_w, b_w,
                                               (want_input, *ctx.needs_input_grad[2:4]))
        g_gate = g_up = None
        if want_input:
            g_gate, g_up = silu_mul_backward(gate2, up2, g_act)
            g_gate = g_gate.view(ctx.shape).to(ctx.in_dtypes[0])
            g_up = g_up.view(ctx.shape).to(ctx.in_dtypes[1])
        return g_gate, g_up, grad_a, grad_b, None, None, None


def lora_parts(layer, x: torch.Tensor):
    """(A, B, frozen base, scaling, compute dtype) when `layer` (a PEFT LoRA layer) can run as `LoRALinear`, else
    None: one active adapter, no dropout, no bias or variant (DoRA...), not merged, a 4-bit or plain linear base,
    matching dtypes or autocast on (and, without autocast, x in a 4-bit base's compute dtype). Anything else keeps
    PEFT's own forward."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if (name not in layer.lora_A or name in getattr(layer, "lora_variant", {})
            or not isinstance(layer.lora_dropout[name], torch.nn.Identity)
            or layer.lora_B[name].bias is not None):
        return None
    lora_a, lora_b = layer.lora_A[name].weight, layer.lora_B[name].weight
    autocast = torch.is_autocast_enabled(x.device.type)
    if not autocast and not (x.dtype == lora_a.dtype == lora_b.dtype):
        return None
    base = layer.get_base_layer()
    kind = frozen_weight_kind(base)
    if kind is None:
        return None
    if kind == "4bit" and not autocast and getattr(base, "compute_dtype", None) not in (None, x.dtype):
        # bitsandbytes computes in its compute dtype whatever x is: fused, fp32 activations (fp32 norms, no
        # autocast) would run the big matmul in fp32, ~10x slower on a GPU than bitsandbytes' own fp16/bf16 one
        return None
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    return lora_a, lora_b, base, layer.scaling[name], dtype


def _fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """base(x) + scaling * B(A(x)) through `LoRALinear` (one autograd node; see there).

    PEFT's LoRA forward clones the 4-bit layer's output, multiplies B(A(x)) by `scaling` and adds the two: three
    passes over a [tokens, out_features] tensor (out = 14,336 for Mistral's MLP) per layer, plus more in the
    backward, for a rank-16 update. Falls back to PEFT's own forward where `lora_parts` says so.
    """
    parts = None if args or kwargs else lora_parts(self, x)
    if parts is None:
        return type(self).forward(self, x, *args, **kwargs)
    with torch.autocast(x.device.type, enabled=False):  # dtypes are explicit inside; autocast would recast
        return LoRALinear.apply(x, *parts)


def _fused_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A SwiGLU MLP (gate_proj, up_proj, down_proj, silu) whose down_proj is LoRA: down through `SiluMulLoRALinear`.
    Where `down_proj` cannot run fused (`lora_parts`), the MLP's own forward runs, exactly as without this patch."""
    parts = lora_parts(self.down_proj, x)
    if parts is None:
        return self.__dict__["_forward_unfused"](x)
    gate, up = self.gate_proj(x), self.up_proj(x)
    with torch.autocast(x.device.type, enabled=False):
        return SiluMulLoRALinear.apply(gate, up, *parts)


def swiglu_mlps(model) -> list[torch.nn.Module]:
    """MLP blocks of `model` that compute down(silu(gate(x)) * up(x)) with a PEFT LoRA down_proj (Mistral, Llama...)."""
    kinds = tuple(type(layer) for layer in lora_layers(model))
    found = []
    for module in model.modules():
        act = getattr(getattr(module, "config", None), "hidden_act", None)
        if (act in ("silu", "swish") and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
                and isinstance(module.down_proj, kinds)):
            found.append(module)
    return found


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
    """Inside the block, LoRA layers of `model` run as `LoRALinear`, and SwiGLU MLPs with a LoRA down_proj as
    `SiluMulLoRALinear` (see above). Yields the number of LoRA layers switched."""
    layers = lora_layers(model) if active else []
    mlps = swiglu_mlps(model) if active else []
    before = [(mlp, mlp.__dict__.get("forward")) for mlp in mlps]  # e.g. Liger's SwiGLU forward, put back after
    for layer in layers:
        layer.forward = types.MethodType(_fused_lora_forward, layer)
    for mlp, forward in before:
        mlp._forward_unfused = forward if forward is not None else types.MethodType(type(mlp).forward, mlp)
        mlp.forward = types.MethodType(_fused_mlp_forward, mlp)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
        for mlp, forward in before:
            mlp.__dict__.pop("forward", None)
            mlp.__dict__.pop("_forward_unfused", None)
            if forward is not None:
                mlp.forward = forward


# ----------------------------------------------------------------------------------------------- Liger kernels


def apply_liger_kernels(model, **kernels: bool) -> str:
    """Liger's fused Triton kernels (e.g. rope=True, rms_norm=True, swiglu=True) patched into `model` in place, the
    way the Trainer applies them for `use_liger_kernel=True` (notebook 05: scoring then runs the kernels notebook 04
    trained with; measured 1.19x faster scoring on an H100, benchmarks/README.md). Returns what was done, for print.
    Same math; the fused kernels round differently in bf16."""
    import importlib.util

    from . import device_capability

    capability = device_capability()
    if capability is not None and capability[0] < 8:
        return (f"use_liger_kernel is on, but Liger's Triton kernels need compute capability >= 8 (this GPU: "
                f"{capability[0]}.{capability[1]}): scoring without them")
    if importlib.util.find_spec("liger_kernel") is None:
        return "use_liger_kernel is on but liger-kernel is not installed: scoring without it (requirements-gpu.txt)"
    from liger_kernel.transformers import _apply_liger_kernel_to_instance  # what transformers' Trainer calls

    _apply_liger_kernel_to_instance(model=model, **kernels)
    return f"Liger kernels on the model, as in training: {', '.join(k for k, on in kernels.items() if on)}"
