"""The course package: what notebooks 01-05 share, one module per pipeline stage. The GPU speed code is in
engine/, the tiny offline model and data in offline_default/, the papermill CLI (`python -m runner`) in runner/.

colab        (all)     the first cell: quiet the libraries; on Colab, install the pinned requirements
profiles     (all)     profiles and validated parameters
rundir       (all)     the run directory notebooks talk through
hub          (01-05)   Hugging Face Hub access with errors that say what to do
environment  (01)      hardware probes, dtype / attention decision, manifest
chat, data   (02)      chat template checks; load, normalize, measure and filter preference pairs
qlora_math   (03, 04)  parameter and memory arithmetic from a model config
modeling     (03-05)   device map, memory report, optimizer, checkpoints, progress and throughput callbacks
scoring      (03, 05)  batched log-prob scoring and greedy generation
plots, report (02, 04, 05)  figures and report.md
"""

__version__ = "0.1.0"
