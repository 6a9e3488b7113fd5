"""The course package: what notebooks 01-05 share, one module per pipeline stage. The GPU speed code is in
engine/, the tiny offline model and data in offline_default/, the papermill CLI (`python -m runner`) in runner/.

colab, profiles, rundir (all)  first-cell setup; profiles and validated parameters; the run directory notebooks share
hub (01-05), environment (01)  Hub access with errors that say what to do; hardware probes, dtype/attention, manifest
chat, data (02)                chat template checks, stream_reply (05's chat); load, normalize, filter preference pairs
qlora_math (03, 04)            parameter and memory arithmetic from a model config
modeling (03-05)               device map, memory report, optimizer, checkpoints, progress and throughput callbacks
scoring (03, 05)               batched log-prob scoring and greedy generation
tracking (04), ifeval (05)     optional TensorBoard logging; optional IFEval with lm-evaluation-harness
plots, report (02, 04, 05)     figures and report.md
"""

__version__ = "0.1.0"
