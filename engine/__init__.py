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
    on_gpu = precision["device"] == "cuda"
    use_liger = cfg.use_liger_kernel and on_gpu and importlib.util.find_spec("liger_kernel") is not None
    if cfg.use_liger_kernel and not use_liger:
        print("use_liger_kernel is on but liger-kernel is not installed (or no GPU): continuing without it. "
              "`pip install -r requirements-gpu.txt` adds it.")
    return {"accelerator_config": {"non_blocking": True},
            "use_liger_kernel": use_liger,
            "liger_kernel_config": LIGER_KERNELS if use_liger else None,
            "train_sampling_strategy": "group_by_length" if cfg.fast_orpo_trainer else "random"}


def fast_orpo_trainer(cfg):
    """Notebook 04's one-line swap: FastORPOTrainer with this run's settings, used exactly like TRL's ORPOTrainer.

    checkpoint_layers k >= 0: checkpoint only the first k layers at the longest batch (adaptive_checkpointing: fewer
    at shorter batches); share_prompt: the prompt computed once for both answers. Under FSDP both stay off (FSDP
    wraps and checkpoints every layer, and runs TRL's own loss path).
    """
    from .fast_orpo import FastORPOTrainer

    settings = {}
    if not fsdp_launched():
        if cfg.checkpoint_layers >= 0:
            settings.update(checkpoint_layers=cfg.checkpoint_layers, adaptive_checkpointing=cfg.adaptive_checkpointing)
        settings["share_prompt"] = cfg.share_prompt
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
