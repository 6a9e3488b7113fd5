"""Which kernels run on which GPU (engine.kernel_plan): a T4 / V100 (compute capability < 8) gets only kernels that
ship compiled for it (SDPA on padded rows, cuBLAS, bitsandbytes): no Triton (FlexAttention, Liger), no FlashAttention
varlen. The table is pinned here for training (notebook 04), scoring and generation (notebook 05), and each place
that acts on it is checked with the capability faked (no GPU needed)."""

import types

import pytest
import torch

import engine
from helpers.profiles import resolve_config

H100 = resolve_config("h100")  # share_prompt and use_liger_kernel on: the settings that need a modern GPU
T4 = resolve_config("t4")
SDPA = "sdpa (padded rows)"
VARLEN = "varlen (FlashAttention, packed rows)"


@pytest.mark.parametrize(("capability", "attention", "share", "liger"), [
    ((7, 5), SDPA, False, False),   # T4: the h100 settings fall back to compiled kernels
    ((8, 0), VARLEN, True, True),   # A100
    ((9, 0), VARLEN, True, True),   # H100
])
def test_decision_table_for_the_h100_settings(capability, attention, share, liger):
    plan = engine.kernel_plan(H100, capability)
    for stage in ("training", "scoring"):
        assert plan[stage] == {"attention": attention, "share_prompt": share, "liger": liger}, stage
    assert plan["generation"] == {"attention": "sdpa", "liger": liger}


@pytest.mark.parametrize("capability", [(7, 5), (8, 0), (9, 0)])
def test_the_t4_profile_runs_padded_sdpa_without_triton_everywhere(capability):
    plan = engine.kernel_plan(T4, capability)
    assert plan["training"] == plan["scoring"] == {"attention": SDPA, "share_prompt": False, "liger": False}


def test_a_cpu_shares_prompts_on_a_dense_mask():  # how CI rehearses the h100 path
    assert engine.kernel_plan(H100, None)["training"] == {"attention": "dense mask (packed rows)",
                                                          "share_prompt": True, "liger": False}


@pytest.fixture
def gpu(monkeypatch):
    """A fake CUDA GPU of the capability the test sets (torch.cuda is only asked, never used)."""
    state = {"cc": (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: state["cc"])
    monkeypatch.delenv(engine.ASSUME_CC_ENV, raising=False)
    return state


def test_the_assumed_capability_lowers_the_real_one(gpu, monkeypatch):
    monkeypatch.setenv(engine.ASSUME_CC_ENV, "7.5")
    assert engine.device_capability() == (7, 5)  # the T4 rehearsal on an H100 runs the T4's kernels
    monkeypatch.setenv(engine.ASSUME_CC_ENV, "9.0")
    gpu["cc"] = (8, 0)
    assert engine.device_capability() == (8, 0)  # never raised above the real GPU


@pytest.mark.parametrize("capability", [(7, 5), (9, 0)])
def test_the_trainer_the_arguments_and_the_scorer_follow_the_table(gpu, capability, capsys):
    from engine.kernels import apply_liger_kernels
    from engine.prefix_sharing import resolve_backend
    from engine.scoring import _can_share

    gpu["cc"] = capability
    modern = capability[0] >= 8
    assert engine.fast_orpo_trainer(H100).share_prompt is modern
    cuda = {"device": "cuda"}
    if modern:
        assert engine.speed_arguments(H100, cuda)["use_liger_kernel"] is (
            __import__("importlib.util").util.find_spec("liger_kernel") is not None)
    else:
        assert engine.speed_arguments(H100, cuda)["use_liger_kernel"] is False
        assert "compute capability" in apply_liger_kernels(types.SimpleNamespace())  # nothing patched on a T4
    model = types.SimpleNamespace(parameters=lambda: iter([types.SimpleNamespace(device=torch.device("cuda"))]))
    assert _can_share(model) is modern
    assert resolve_backend("auto", torch.device("cuda")) == ("varlen" if modern and _has_varlen() else "dense")
    assert "flex" not in resolve_backend("auto", torch.device("cuda"))
    if not modern:
        assert "padded rows" in capsys.readouterr().out  # the fallback is said, not silent


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True
