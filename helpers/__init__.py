"""Plumbing shared by the ORPO + QLoRA notebook series, one module per pipeline stage.

environment  (01)     hardware probes, dtype / attention decision, manifest
profiles     (all)    profiles and validated parameters
rundir       (all)    the run directory notebooks talk through
offline_default, tasks (02, 05)  the embedded tiny model + UltraFeedback-schema data, task checkers
data         (02)     load, normalize, measure and filter preference pairs
modeling     (03, 04) memory report, checkpoints, progress and throughput callbacks
scoring      (05)     batched log-prob scoring and greedy generation (its log-prob core is shared with fast_orpo)
fast_orpo    (04 GPU) FastORPOTrainer: TRL's ORPO loss without the full logits, length-grouped batches
prefix_sharing (04, 05 GPU) one padding-free packed row per batch, each prompt computed once for all its answers
kernels      (04, 05) attention backend choice and the fused LoRA update (GPU speed, same math)
distributed  (04)     num_processes > 1: `accelerate launch` runs notebook 04's own cells in N processes (DDP/FSDP)
plots, report (02, 04, 05)  figures and report.md
runner       (CLI)    papermill 01 -> 05: `python -m helpers.runner`
"""

__version__ = "0.1.0"
