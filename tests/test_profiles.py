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


# ---- values typed as text read like papermill's -p (the README's `-p learning_rate 1e-3` was refused) ----------


@pytest.mark.parametrize("name, text, value", [
    ("learning_rate", "1e-3", 1e-3), ("learning_rate", "2e-4", 2e-4), ("learning_rate", "5e-5", 5e-5),
    ("fast_orpo_trainer", "true", True), ("fast_orpo_trainer", "True", True), ("merge_adapter", "false", False),
    ("max_steps", "100", 100), ("n_train", 2e3, 2000), ("beta", "0.2", 0.2),
])
def test_text_values_are_read_as_the_declared_type(name, text, value):
    assert getattr(resolve_config("tiny", {name: text}), name) == value


def test_every_profile_field_is_either_trainer_path_or_hardware_sized():
    """A field set only by a GPU profile must be rehearsed on the CPU (TRAINER_PATH) or only size the run."""
    from rehearsal import HARDWARE_SIZED, TRAINER_PATH

    assert not set(TRAINER_PATH) & set(HARDWARE_SIZED)
    for name, settings in PROFILES.items():
        unclassified = set(settings) - set(TRAINER_PATH) - set(HARDWARE_SIZED)
        assert not unclassified, f"profile {name} sets {unclassified}: add them to TRAINER_PATH or HARDWARE_SIZED"


def test_cpu_rehearsal_carries_each_gpu_profiles_trainer_path():
    from helpers.profiles import GPU_PROFILES
    from rehearsal import TRAINER_PATH, cpu_rehearsal

    for name in GPU_PROFILES:
        overrides = cpu_rehearsal(name)
        cfg = resolve_config("tiny", overrides)
        for field in TRAINER_PATH:
            expected = PROFILES[name].get(field, getattr(RunConfig, field))
            if field == "checkpoint_layers" and expected >= 2:
                expected = 1  # capped below the tiny model's 2 layers, so checkpointing stays selective
            assert getattr(cfg, field) == expected, (name, field)
        assert cfg.fast_orpo_trainer and cfg.gradient_checkpointing
        assert cfg.model_id == RunConfig.model_id  # the offline default: runs on a CPU
