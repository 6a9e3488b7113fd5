"""Chatting with a tuned run (notebook 05, runner/chat.py): `helpers.chat.stream_reply` streams exactly the greedy
answer notebook 05 generates (helpers.scoring.generate_greedy), and `python -m runner.chat <run>` gives it for
--message and in a conversation.

Fast: the offline default's base model (no run needed). Slow: a short series on the offline default, then the
function and the CLI on its tuned model; and SmolLM2 (its own ChatML template), where the reply must equal
generate_greedy's and stop at the template's end-of-turn token.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import runner
from helpers.chat import stream_reply, template_facts
from helpers.scoring import generate_greedy
from offline_default import OFFLINE_MODEL_ID, resolve
from runner import chat

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"max_steps": 40, "eval_steps": 20, "save_steps": 20, "logging_steps": 10, "n_train": 200, "n_eval": 60}
QUESTIONS = ["Which is the largest of 8 7 9 5?", "How many numbers does this list have: 8 4 1 7?"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- fast: the offline default's base model ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_model():
    folder = resolve(OFFLINE_MODEL_ID)  # cached by the other tests' first run (offline_default/README.md)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


def test_streamed_pieces_are_the_greedy_answer(base_model):
    assert chat.stream_reply is stream_reply  # the CLI streams with the notebooks' function (notebook 05)
    model, tokenizer = base_model
    for question in QUESTIONS:
        pieces = list(chat.stream_reply(model, tokenizer, user(question), max_new_tokens=12))
        assert "".join(pieces).strip() == generate_greedy(model, tokenizer, [user(question)], 12)[0]
        assert pieces and pieces[0] == pieces[0].lstrip()


def test_an_error_while_generating_reaches_the_caller(base_model):
    _, tokenizer = base_model

    class Broken(torch.nn.Linear):
        def generate(self, **kwargs):
            raise RuntimeError("generation failed")

    with pytest.raises(RuntimeError, match="generation failed"):
        list(chat.stream_reply(Broken(1, 1), tokenizer, user("Hi"), max_new_tokens=4))


def test_cli_names_a_missing_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(tmp_path))
    assert chat.main(["no-such-run", "--message", "Hi"]) == 2
    assert "No run 'no-such-run'" in capsys.readouterr().err


# ---- slow: a tuned run ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("chat")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORPO_OUTPUTS_DIR", str(outputs))
        args = ["--run-name", "chat"] + [a for k, v in SHORT.items() for a in ("-p", k, str(v))]
        assert runner.main(args) == 0
        model, tokenizer, cfg = chat.load_tuned("chat")
    from datasets import load_from_disk
    held_out = load_from_disk(str(outputs / "chat" / "data"))["test"]
    prompts = [held_out[i]["prompt"] for i in range(3)]
    expected = [generate_greedy(model, tokenizer, [p], cfg.max_new_tokens)[0] for p in prompts]
    return {"outputs": outputs, "model": model, "tokenizer": tokenizer, "cfg": cfg, "prompts": prompts,
            "expected": expected}


def run_cli(tuned_run, *args, stdin=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORPO_OUTPUTS_DIR": str(tuned_run["outputs"])}
    return subprocess.run([sys.executable, "-m", "runner.chat", "chat", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_held_out_prompts_get_the_tuned_answer_from_the_function(tuned_run):
    assert all(p[-1]["role"] == "user" and len(p) == 1 for p in tuned_run["prompts"])  # one user turn each
    for prompt, expected in zip(tuned_run["prompts"], tuned_run["expected"]):
        reply = "".join(chat.stream_reply(tuned_run["model"], tuned_run["tokenizer"], prompt,
                                          tuned_run["cfg"].max_new_tokens)).strip()
        assert reply == expected and reply


@pytest.mark.slow
def test_cli_answers_one_message_with_the_tuned_answer(tuned_run):
    prompt, expected = tuned_run["prompts"][0], tuned_run["expected"][0]
    result = run_cli(tuned_run, "--message", prompt[-1]["content"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == expected
    short = run_cli(tuned_run, "--message", prompt[-1]["content"], "--max-new-tokens", "1")
    one_token = generate_greedy(tuned_run["model"], tuned_run["tokenizer"], [prompt], 1)[0]
    assert short.returncode == 0 and short.stdout.strip() == one_token


@pytest.mark.slow
def test_cli_conversation_until_an_empty_line(tuned_run):
    first, second = (p[-1]["content"] for p in tuned_run["prompts"][:2])
    result = run_cli(tuned_run, stdin=f"{first}\n/new\n{second}\n\nnever read\n")
    assert result.returncode == 0, result.stderr[-2000:]
    replies = [line.split("model> ", 1)[1].strip() for line in result.stdout.splitlines() if "model> " in line]
    assert replies == tuned_run["expected"][:2]  # /new: the second question starts a new conversation
    assert run_cli(tuned_run, stdin="").returncode == 0  # Ctrl-D (EOF) ends it too


# ---- slow: a real chat model with its own template --------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_reply_streams_and_stops_at_the_templates_end_token():
    sys.path.insert(0, str(ROOT / "tools"))
    import smollm2

    folder = smollm2.ensure_smollm2()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in template_facts(tokenizer).stop_token_ids
    pieces = list(chat.stream_reply(model, tokenizer, user("What is the capital of France?"), max_new_tokens=60))
    reply = "".join(pieces).strip()
    assert len(pieces) > 1 and "Paris" in reply, pieces
    assert reply == generate_greedy(model, tokenizer, [user("What is the capital of France?")], 60)[0]
    assert "<|im" not in reply and "\nuser" not in reply  # no special token, no next turn
    assert len(tokenizer(reply, add_special_tokens=False)["input_ids"]) < 59  # it stopped before the limit
