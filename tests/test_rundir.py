import json
import os

import pytest

from helpers.modeling import latest_valid_checkpoint
from helpers.profiles import ParameterError
from helpers.rundir import RunDir, open_run, write_json


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(tmp_path))
    return tmp_path


def test_start_writes_params_and_later_notebooks_read_and_record_overrides(outputs):
    cfg, run = open_run("r1", "tiny", {"max_steps": 7}, start=True)
    assert json.loads(run.params.read_text())["max_steps"] == 7
    cfg2, _ = open_run("r1", overrides={"learning_rate": 1e-3, "beta": None})
    assert (cfg2.max_steps, cfg2.learning_rate, cfg2.beta) == (7, 1e-3, cfg.beta)
    assert json.loads(run.params.read_text())["learning_rate"] == 1e-3


def test_later_notebook_without_notebook_01_says_what_to_run(outputs):
    with pytest.raises(FileNotFoundError, match="run notebook 01 first"):
        open_run("never-started")


def test_finished_run_is_never_overwritten_and_overwrite_archives_it(outputs):
    _, run = open_run("done", "tiny", start=True)
    write_json(run.eval_json, {"ok": True})
    (run.root / "adapter").mkdir()
    with pytest.raises(FileExistsError, match="never overwritten silently"):
        open_run("done", "tiny", start=True)
    assert run.eval_json.exists()
    open_run("done", "tiny", start=True, overwrite=True)
    archived = [p for p in outputs.iterdir() if p.name.startswith("done.replaced-")]
    assert len(archived) == 1 and (archived[0] / "eval.json").exists() and (archived[0] / "adapter").is_dir()
    assert not run.eval_json.exists()


def test_reopening_unfinished_run_with_other_parameters_is_refused(outputs):
    open_run("r2", "tiny", {"max_steps": 5}, start=True)
    open_run("r2", "tiny", {"max_steps": 5}, start=True)  # same parameters: resume is fine
    with pytest.raises(FileExistsError, match="other parameters"):
        open_run("r2", "tiny", {"max_steps": 6}, start=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_outputs_folder_is_a_parameter_error(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(locked / "sub"))
    with pytest.raises(ParameterError, match="Cannot write"):
        open_run("x", "tiny", start=True)


def test_output_folder_that_is_a_file_is_a_parameter_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(blocker))
    with pytest.raises(ParameterError, match="Cannot write to the output folder"):
        open_run("x", "tiny", start=True)


def test_latest_valid_checkpoint_skips_incomplete_ones(tmp_path, capsys):
    def make(step, complete=True, state="{}"):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(state)
        if complete:
            (folder / "adapter_model.safetensors").write_bytes(b"x")
    assert latest_valid_checkpoint(tmp_path / "missing") is None
    make(50)
    make(100)
    make(150, complete=False)
    make(200, state="{truncated")
    assert latest_valid_checkpoint(tmp_path).endswith("checkpoint-100")
    out = capsys.readouterr().out
    assert "checkpoint-150" in out and "checkpoint-200" in out


def test_fsdp_sharded_checkpoints_are_not_resumed_and_say_so(tmp_path, capsys):
    folder = tmp_path / "checkpoint-8"
    (folder / "pytorch_model_fsdp_0").mkdir(parents=True)  # what the Trainer writes under FSDP: no adapter file
    (folder / "trainer_state.json").write_text("{}")
    assert latest_valid_checkpoint(tmp_path) is None
    assert "FSDP sharded checkpoint" in capsys.readouterr().out


def test_saved_adapter_check_fails_loudly_on_a_missing_or_empty_tensor(tmp_path):
    """Notebook 04 checks the file it saved: an FSDP run on 2 GPUs wrote an adapter without its LoRA weights and
    notebook 05 silently evaluated the base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import MistralConfig, MistralForCausalLM

    from engine.multi_gpu import adapter_tensor_names, check_saved_adapter

    cfg = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
    model = get_peft_model(MistralForCausalLM(cfg), LoraConfig(r=2, target_modules="all-linear",
                                                               task_type="CAUSAL_LM"))
    expected = adapter_tensor_names(model)
    assert len(expected) == 14 and all(".default." not in n for n in expected)  # 7 modules x (A, B)
    model.save_pretrained(tmp_path / "ok")
    assert check_saved_adapter(tmp_path / "ok", expected) == 14
    model.save_pretrained(tmp_path / "none", state_dict={})  # what the FSDP run's file amounted to
    with pytest.raises(RuntimeError, match="0 tensors saved, 14 trainable LoRA tensors.*missing 14"):
        check_saved_adapter(tmp_path / "none", expected)
    tensors = load_file(tmp_path / "ok" / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    save_file({**tensors, first: torch.empty(0)}, tmp_path / "ok" / "adapter_model.safetensors")
    with pytest.raises(RuntimeError, match="empty 1"):
        check_saved_adapter(tmp_path / "ok", expected)


def test_rundir_require_names_the_notebook(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="run notebook 04 first"):
        run.require(run.adapter, "notebook 04")


# ---- a run's record stays true however a notebook is executed -----------------------------------------------


def _finish(run, *stages):
    from helpers.rundir import STAGE_DONE

    for stage in stages:
        write_json(run.root / STAGE_DONE[stage], {})


def test_changed_parameters_after_a_stage_is_done_are_refused_and_nothing_changes(outputs):
    from helpers.rundir import RunRecordError

    _, run = open_run("rec", "tiny", {"max_steps": 20}, start=True)
    _finish(run, "02", "03", "04")
    before = run.params.read_text()
    with pytest.raises(RunRecordError, match=r"already produced outputs.*beta=0.2 \(stored: 0.1\).*new run_name"):
        open_run("rec", overrides={"beta": 0.2}, stage="04")
    with pytest.raises(RunRecordError, match="max_length"):
        open_run("rec", overrides={"max_length": 64}, stage="02")
    assert run.params.read_text() == before


def test_completed_training_is_never_retrained_by_rerunning_notebook_04(outputs):
    from helpers.rundir import RunRecordError

    _, run = open_run("rec4", "tiny", start=True)
    _finish(run, "02", "03", "04")
    with pytest.raises(RunRecordError, match="training is complete"):
        open_run("rec4", stage="04")
    open_run("rec4", stage="05")  # evaluation may run (again) on the same parameters
    _finish(run, "05")
    with pytest.raises(RunRecordError, match="is finished"):
        open_run("rec4", stage="04")
    with pytest.raises(RunRecordError, match="is finished.*max_new_tokens"):
        open_run("rec4", overrides={"max_new_tokens": 4}, stage="05")


def test_a_finished_run_reopens_in_notebook_05_for_ifeval_or_merges_only(outputs):
    """IFEval and the merges add outputs to a finished run (README: a Hub user's run, then IFEval); anything else that
    05 would change stays refused, and params.json records what was added."""
    from helpers.rundir import RunRecordError

    _, run = open_run("hub", "tiny", start=True)
    _finish(run, "02", "03", "04", "05")
    cfg, _ = open_run("hub", overrides={"ifeval": True, "ifeval_limit": 16, "merge_adapter": True}, stage="05")
    assert (cfg.ifeval, cfg.ifeval_limit, cfg.merge_adapter) == (True, 16, True)
    assert json.loads(run.params.read_text())["ifeval"] is True
    with pytest.raises(RunRecordError, match="is finished.*max_new_tokens"):
        open_run("hub", overrides={"ifeval": True, "max_new_tokens": 4}, stage="05")
    with pytest.raises(RunRecordError, match="is finished"):
        open_run("hub", overrides={"ifeval": False}, stage="04")


def test_overrides_before_their_stage_ran_are_recorded(outputs):
    _, run = open_run("fresh", "tiny", start=True)
    _finish(run, "02", "03")
    cfg, _ = open_run("fresh", overrides={"beta": 0.2}, stage="04")
    assert cfg.beta == 0.2 and json.loads(run.params.read_text())["beta"] == 0.2


def test_a_run_started_before_a_parameter_existed_reopens_with_its_default(outputs):
    """A course update that adds a parameter must not make an unfinished run look changed (its params.json lacks
    the new field, whose default is what that run used)."""
    cfg, run = open_run("older", start=True)
    stored = json.loads(run.params.read_text())
    stored.pop("prompt_column")
    run.params.write_text(json.dumps(stored))
    cfg, run = open_run("older", start=True)  # no "other parameters" error
    assert cfg.prompt_column == ""
    with pytest.raises(FileExistsError, match="other parameters"):
        open_run("older", start=True, overrides={"prompt_column": "question"})
