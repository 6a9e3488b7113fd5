import pytest
import torch

from helpers.hub import HubAccessError, check_hub_access, hub_errors_explained
from helpers.modeling import explain_out_of_memory
from helpers.profiles import ParameterError, resolve_config


def test_no_network_is_one_clear_error_pointing_to_the_offline_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubAccessError) as err:
        check_hub_access("mistralai/Mistral-7B-v0.1")
    assert "Cannot reach the Hugging Face Hub" in str(err.value) and "offline default" in str(err.value)


def test_gated_repo_says_log_in(monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        raise GatedRepoError("403 gated", response=None)
    monkeypatch.setattr(HfApi, "repo_info", gated)
    with pytest.raises(HubAccessError, match="gated.*huggingface-cli login"):
        check_hub_access("mistralai/Mistral-7B-v0.1")


def test_offline_ids_and_local_paths_never_ask_the_hub(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    monkeypatch.setattr(HfApi, "repo_info", lambda *a, **k: pytest.fail("asked the Hub"))
    check_hub_access("offline:tiny-mistral")
    check_hub_access(str(tmp_path))


def test_from_pretrained_oserror_gets_the_fix():
    with pytest.raises(HubAccessError, match="Could not load someone/missing.*offline default"):
        with hub_errors_explained("someone/missing"):
            raise OSError("someone/missing is not a local folder and is not a valid model identifier")


def test_out_of_memory_gets_concrete_advice():
    cfg = resolve_config("tiny")
    with pytest.raises(RuntimeError, match="halve per_device_train_batch_size.*resumes from its last checkpoint"):
        with explain_out_of_memory(cfg):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    # selective checkpointing (h100): checkpointing more layers comes first, with the value to try
    cfg = resolve_config("h100", has_gpu=True)
    advice = r"Fix, cheapest first: checkpoint more layers .*-p checkpoint_layers 26, or -1"
    with pytest.raises(RuntimeError, match=advice):
        with explain_out_of_memory(cfg):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_token_pasted_as_parameter_is_refused_without_echoing_it():
    token = "hf_" + "a1B2c3D4" * 4
    with pytest.raises(ParameterError) as err:
        resolve_config("tiny", {"model_id": token})
    assert token not in str(err.value) and "HF_TOKEN" in str(err.value)
