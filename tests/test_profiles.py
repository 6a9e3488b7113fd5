import pytest

from helpers.profiles import PROFILES, ParameterError, RunConfig, choose_profile, resolve_config


def test_tiny_is_the_dataclass_default_and_gpu_profiles_use_the_real_ids():
    assert resolve_config("tiny") == RunConfig(profile="tiny")
    for name in ("t4", "a100", "h100"):
        cfg = resolve_config(name)
        assert cfg.model_id == "mistralai/Mistral-7B-v0.1"
        assert cfg.dataset_id == "HuggingFaceH4/ultrafeedback_binarized"
        assert cfg.max_length == 1024


def test_overrides_win_and_none_means_default():
    cfg = resolve_config("tiny", {"learning_rate": 1e-3, "beta": None, "max_steps": 5})
    assert (cfg.learning_rate, cfg.beta, cfg.max_steps) == (1e-3, RunConfig.beta, 5)


def test_int_is_accepted_for_float_but_not_the_other_way():
    assert resolve_config("tiny", {"learning_rate": 1}).learning_rate == 1.0
    with pytest.raises(ParameterError, match="`n_train` must be int"):
        resolve_config("tiny", {"n_train": 2.5})


@pytest.mark.parametrize("name, value, match", [
    ("learning_rate", 0.0, "`learning_rate` must be > 0"),
    ("learning_rate", -1e-4, "`learning_rate` must be > 0"),
    ("beta", 0.0, "`beta` must be > 0"),
    ("per_device_train_batch_size", 0, "`per_device_train_batch_size` must be > 0"),
    ("max_length", 8, "`max_length` = 8 is too small"),
    ("lora_dropout", 1.0, "`lora_dropout` must be in"),
    ("max_steps", 0, "`max_steps` must be -1"),
    ("learning_rate", "fast", "`learning_rate` must be float"),
    ("trust_remote_code", "yes", "`trust_remote_code` must be bool"),
    ("n_train", True, "`n_train` must be int"),
    ("run_name", "../escape", "plain folder name"),
])
def test_bad_values_name_the_parameter_and_the_fix(name, value, match):
    with pytest.raises(ParameterError, match=match) as err:
        resolve_config("tiny", {name: value})
    assert "Fix" in str(err.value)


def test_unknown_parameter_and_profile():
    with pytest.raises(ParameterError, match=r"Unknown parameter\(s\) \['learning_rat'\]"):
        resolve_config("tiny", {"learning_rat": 1e-3})
    with pytest.raises(ParameterError, match="Unknown profile 'v100'"):
        resolve_config("v100")


def test_gpu_profile_without_gpu_is_refused_before_any_work():
    with pytest.raises(ParameterError, match="needs a CUDA GPU"):
        resolve_config("h100", has_gpu=False)
    assert resolve_config("tiny", has_gpu=False).profile == "tiny"


@pytest.mark.parametrize("cc, expected", [(None, "tiny"), ((7, 5), "t4"), ((8, 0), "a100"), ((8, 9), "a100"),
                                          ((9, 0), "h100")])
def test_auto_profile_follows_compute_capability(cc, expected):
    assert choose_profile(cc)[0] == expected
    assert resolve_config("auto", compute_capability=cc, has_gpu=cc is not None).profile == expected


def test_every_profile_is_valid():
    for name in PROFILES:
        resolve_config(name)
