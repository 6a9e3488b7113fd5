"""The embedded offline default: a tiny Mistral-architecture base model and UltraFeedback-schema preference data.

A data-and-model factory, not part of the lesson: with no Hub access, notebooks 02-05 load these stand-ins through
the same `from_pretrained(..., quantization_config=...)` and `load_from_disk` code as Mistral-7B-v0.1 and
HuggingFaceH4/ultrafeedback_binarized. See offline_default/README.md.

    build.py   builds both, deterministically from a seed, and caches them (`ensure_offline_default`, `resolve`)
    tasks.py   the task families, each with a programmatic checker (notebook 05's task success)
"""

from .build import OFFLINE_DATASET_ID, OFFLINE_MODEL_ID, OfflineDefault, ensure_offline_default, resolve

__all__ = ["OFFLINE_DATASET_ID", "OFFLINE_MODEL_ID", "OfflineDefault", "ensure_offline_default", "resolve"]
