"""The engine: speed and scale for notebook 04's training and notebook 05's scoring. Not part of the lesson.

The course (`helpers`, notebooks 01-05) reaches it through one switch, the profile field `fast_orpo_trainer` (on in
the GPU profiles, off in `tiny`), and through `num_processes` for several GPUs. Everything here computes the same
numbers as TRL's `ORPOTrainer` and the course's reference scorer; engine/README.md says how that is tested and how to
switch each part off.

    fast_orpo.py       FastORPOTrainer: a drop-in subclass of TRL's ORPOTrainer (same loss, less work)
    prefix_sharing.py  each pair as one padding-free [prompt, chosen, rejected] segment: the prompt computed once
    kernels.py         LoRA layers as one autograd node, attention backends, Liger's fused kernels
    scoring.py         the fast held-out scorer (notebook 05) and the log-prob core the trainer shares
    multi_gpu.py       notebook 04 in N processes (accelerate launch): DDP-QLoRA and FSDP-QLoRA
"""

from __future__ import annotations

import importlib.util
import os

# Liger computes RoPE, RMSNorm and SwiGLU in fused Triton kernels; the loss is the trainer's own, so Liger's loss
# kernels stay off.
LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}


ASSUME_CC_ENV = "ORPO_ASSUME_COMPUTE_CAPABILITY"  # e.g. "7.5": rehearse the T4's kernel choices on a newer GPU


def device_capability() -> tuple[int, int] | None:
    """This GPU's compute capability, None without one. `ORPO_ASSUME_COMPUTE_CAPABILITY=7.5` lowers it (never
    raises it), so the GPU check on an H100 runs the kernels a T4 would (helpers.environment does the same for
    the dtype decisions)."""
    import torch

    if not torch.cuda.is_available():
        return None
    cc = tuple(torch.cuda.get_device_capability())
    assumed = os.environ.get(ASSUME_CC_ENV)
    if assumed and tuple(int(x) for x in assumed.split(".")) < cc:
        cc = tuple(int(x) for x in assumed.split("."))
    return cc


def kernel_plan(cfg, capability: tuple[int, int] | None) -> dict:
    """Which kernels the trainer (04), the scorer and the generations (05) use on a GPU of `capability`.

    Below compute capability 8 (T4, V100) only kernels that ship compiled for the GPU run: PyTorch's SDPA on padded
    rows, cuBLAS matmuls (the fused LoRA layers are plain torch ops), bitsandbytes. No Triton (FlexAttention and
    Liger are Triton kernels tuned on newer GPUs, and can exceed a T4's 64 KB of shared memory: pytorch#133254) and
    no FlashAttention varlen (no sm75 kernels): prefix sharing is off there, so each pair runs as two padded rows,
    with the same loss. On a CPU (tests) prefix sharing runs on a dense mask. tests/test_kernel_plan.py pins the table.
    """
    modern = capability is not None and capability[0] >= 8
    share = cfg.fast_orpo_trainer and cfg.share_prompt and (modern or capability is None)
    liger = cfg.use_liger_kernel and modern
    packed = "varlen (FlashAttention, packed rows)" if capability else "dense mask (packed rows)"
    attention = packed if share else "sdpa (padded rows)"
    return {"training": {"attention": attention, "share_prompt": share, "liger": liger},
            "scoring": {"attention": attention, "share_prompt": share, "liger": liger},
            "generation": {"attention": "sdpa", "liger": liger}}


def fsdp_launched() -> bool:
    """True in a process that `accelerate launch` started with FSDP (configs/accelerate/fsdp_qlora.yaml)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def speed_arguments(cfg, precision: dict) -> dict:
    """Notebook 04's ORPOConfig: the engine's TrainingArguments (`**speed_arguments(cfg, precision)`).

    * accelerator_config non_blocking: batches go to the GPU from pinned memory without waiting (a blocking copy
      first waits for the previous step to finish);
    * use_liger_kernel (profile field `use_liger_kernel`, GPU only, if liger-kernel is installed);
    * train_sampling_strategy "group_by_length" with the fast trainer: pairs of similar length share a batch, so
      less padding is computed.
    """
    capability = device_capability() if precision["device"] == "cuda" else None
    use_liger = kernel_plan(cfg, capability)["training"]["liger"]
    if cfg.use_liger_kernel and not use_liger:
        print("use_liger_kernel is on, but Liger's Triton kernels need a GPU of compute capability >= 8: "
              "continuing without them.")
    elif use_liger and importlib.util.find_spec("liger_kernel") is None:
        use_liger = False
        print("use_liger_kernel is on but liger-kernel is not installed: continuing without it. "
              "`pip install -r requirements-gpu.txt` adds it.")
    return {"accelerator_config": {"non_blocking": True},
            "use_liger_kernel": use_liger,
            "liger_kernel_config": LIGER_KERNELS if use_liger else None,
            "train_sampling_strategy": "group_by_length" if cfg.fast_orpo_trainer else "random"}


def fast_orpo_trainer(cfg):
    """Notebook 04's one-line swap: FastORPOTrainer with this run's settings, used exactly like TRL's ORPOTrainer.

    checkpoint_layers k >= 0: checkpoint only the first k layers at the longest batch (adaptive_checkpointing: fewer
    at shorter batches); share_prompt: the prompt computed once for both answers (GPUs of compute capability >= 8
    only: `kernel_plan`). Under FSDP both stay off (FSDP wraps and checkpoints every layer, and runs TRL's own loss
    path).
    """
    from .fast_orpo import FastORPOTrainer

    settings = {}
    if not fsdp_launched():
        if cfg.checkpoint_layers >= 0:
            settings.update(checkpoint_layers=cfg.checkpoint_layers, adaptive_checkpointing=cfg.adaptive_checkpointing)
        settings["share_prompt"] = kernel_plan(cfg, device_capability())["training"]["share_prompt"]
        if cfg.share_prompt and not settings["share_prompt"]:
            print("share_prompt is on, but prefix sharing needs FlashAttention's varlen kernel (compute capability "
                  ">= 8): each pair runs as two padded rows instead, with the same loss.")
    return type("FastORPOTrainer", (FastORPOTrainer,), {**settings, "__module__": FastORPOTrainer.__module__})


def describe(trainer) -> str:
    """One line on what the fast trainer does in this run (notebook 04 prints it)."""
    layers = getattr(trainer, "checkpoint_layers", None)
    parts = [f"batches {trainer.args.train_sampling_strategy}"]
    if layers is not None:
        parts.append(f"checkpointing the first {layers} layers" + (" at the longest batch, fewer at shorter ones"
                                                                   if trainer.adaptive_checkpointing else ""))
    if getattr(trainer, "share_prompt", False):
        parts.append("prompt shared by chosen and rejected")
    if trainer.args.use_liger_kernel:
        parts.append("Liger kernels")
    return "engine: " + ", ".join(parts)
