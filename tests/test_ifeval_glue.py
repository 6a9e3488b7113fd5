"""IFEval through lm-evaluation-harness (notebook 05, section 7; helpers/ifeval.py), offline.

The Hub's google/IFEval is out of reach here, so six IFEval-format rows written for this test
(tests/fixtures/ifeval/rows.jsonl: key, prompt, instruction_id_list, kwargs, google/IFEval's schema) are scored by
lm-eval's own `ifeval` task, copied through `include:` with only the data source changed, on the offline default in
4 bits, with the adapter off (base) and on (tuned), with notebook 05's call. nltk's punkt_tab data is not on PyPI:
the rows' checkers never tokenize sentences, and a stand-in punkt_tab folder stops lm-eval's import-time download.
No test touches the network (a socket guard fails any connection).
"""

import socket
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is optional: pip install -r requirements-ifeval.txt")

from helpers.ifeval import METRICS, check_ready, ifeval_scores, ifeval_table  # noqa: E402

ROWS = Path(__file__).parent / "fixtures" / "ifeval" / "rows.jsonl"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: HF offline switches on, any socket connection fails, nltk.download fails; a stand-in punkt_tab."""
    import datasets
    import huggingface_hub
    import nltk

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(nltk, "download", no_network)
    stand_in = tmp_path / "nltk_data"
    (stand_in / "tokenizers" / "punkt_tab" / "english").mkdir(parents=True)
    monkeypatch.setattr(nltk.data, "path", [str(stand_in)])
    return tmp_path


def test_missing_punkt_tab_is_one_clear_error_before_anything_loads(offline, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(offline / "empty")])
    with pytest.raises(LookupError, match=r"nltk\.download\('punkt_tab'\).*NLTK_DATA"):
        check_ready()


def test_missing_lm_eval_names_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -r requirements-ifeval\.txt"):
        check_ready()


def test_table_shows_base_tuned_and_the_papers_row():
    table = ifeval_table({"base": dict.fromkeys(METRICS, 0.25), "tuned": dict.fromkeys(METRICS, 0.5)})
    lines = table.splitlines()
    assert "paper ORPO-β" in lines[0] and len(lines) == 1 + len(METRICS)
    assert "52.87%" in lines[1] and "66.19%" in lines[4] and lines[2].rstrip().endswith("—")


def test_base_and_tuned_scored_on_local_ifeval_rows(offline):
    import bitsandbytes as bnb
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from offline_default import OFFLINE_MODEL_ID, resolve

    ifeval_yaml = Path(lm_eval.__file__).parent / "tasks" / "ifeval" / "ifeval.yaml"
    (offline / "tasks").mkdir()
    (offline / "tasks" / "ifeval_local.yaml").write_text(
        f"include: {ifeval_yaml}\ntask: ifeval_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {ROWS}\n")
    folder = resolve(OFFLINE_MODEL_ID)  # the offline default (cached), in 4 bits as notebook 05 loads it on a CPU
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(folder, quantization_config=nf4, dtype=torch.float32)
    for module in base.modules():  # same numbers on every CPU (tests/test_merge.py)
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # PEFT starts B at 0 (no update): a random adapter makes "tuned" a different model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    check_ready()
    tasks = TaskManager(include_path=str(offline / "tasks"), include_defaults=False)
    scores, samples = {}, {}
    for name, adapter in (("base", model.disable_adapter()), ("tuned", nullcontext())):
        with adapter:  # notebook 05's call, plus the local task and a short generation (the model's context is 256)
            out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
                                  tasks=["ifeval_local"], apply_chat_template=True, limit=None, task_manager=tasks,
                                  gen_kwargs={"max_gen_toks": 24}, log_samples=True)
        scores[name] = ifeval_scores(out, task="ifeval_local")
        samples[name] = [s["resps"][0][0] for s in out["samples"]["ifeval_local"]]
        assert len(samples[name]) == 6
    for name in ("base", "tuned"):
        assert scores[name].pop("n_prompts") == 6
        assert set(scores[name]) == set(METRICS) and all(0.0 <= v <= 1.0 for v in scores[name].values()), scores
    assert samples["base"] != samples["tuned"]  # the adapter was off, then on
    print(ifeval_table(scores))


def test_the_runner_and_the_sweep_say_so_before_anything_runs(offline, monkeypatch, capsys):
    """`-p ifeval true` is needed only in notebook 05, after training: a missing punkt_tab (or lm-eval) must stop the
    runner and the sweep at the start, with one error and no run folder."""
    import nltk

    import runner
    from runner import sweep

    outputs = offline / "outputs"
    outputs.mkdir()
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(outputs))
    monkeypatch.setattr(nltk.data, "path", [str(offline / "empty")])
    assert runner.main(["--run-name", "hub", "-p", "ifeval", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("ERROR") == 1 and "punkt_tab" in err and not list(outputs.iterdir())
    assert sweep.main(["--sweep", "beta=0.05,0.1", "--run-name", "s", "-p", "ifeval", "true"]) == 2
    assert "punkt_tab" in capsys.readouterr().err and not list(outputs.iterdir())
