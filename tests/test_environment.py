import pytest

from helpers.environment import Hardware, decide_precision, environment_manifest, library_versions


@pytest.mark.parametrize("cc, flash, dtype, compute, attn, bf16, fp16", [
    (None, False, "float32", "float32", "sdpa", False, False),
    (None, True, "float32", "float32", "sdpa", False, False),          # flash_attn is useless on CPU
    ((7, 5), False, "float16", "float16", "sdpa", False, True),        # T4: no real bf16
    ((7, 5), True, "float16", "float16", "sdpa", False, True),         # FA2 needs cc >= 8
    ((8, 0), False, "bfloat16", "bfloat16", "sdpa", True, False),
    ((8, 0), True, "bfloat16", "bfloat16", "flash_attention_2", True, False),
    ((9, 0), False, "bfloat16", "bfloat16", "sdpa", True, False),
    ((9, 0), True, "bfloat16", "bfloat16", "flash_attention_2", True, False),
])
def test_precision_decision(cc, flash, dtype, compute, attn, bf16, fp16):
    p = decide_precision(Hardware("fake", cc, 16.0 if cc else None, flash))
    assert (p.torch_dtype, p.bnb_4bit_compute_dtype, p.attn_implementation, p.use_bf16, p.use_fp16) == \
        (dtype, compute, attn, bf16, fp16)
    assert p.device == ("cpu" if cc is None else "cuda")
    assert set(p.reasons) == {"dtype", "compute_dtype", "attention"}


def test_manifest_has_versions_and_no_absolute_paths():
    hw = Hardware("cpu", None, None, False)
    manifest = environment_manifest(hw, decide_precision(hw))
    assert manifest["versions"]["torch"] and manifest["versions"]["trl"] == library_versions()["trl"]
    assert "/" not in manifest["python_executable_name"]
