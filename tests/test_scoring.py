import math

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from helpers.chat import CHAT_TEMPLATE
from offline_default.build import train_tokenizer
from helpers.scoring import generate_greedy, mean_answer_logps, preference_metrics

TEXTS = ["What is 3 plus 4? 7", "Reverse the letters: c a t", "t a c", "Sort ascending: 5 2 9", "2 5 9"] * 20


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=128))
    return model.eval(), tokenizer


PROMPTS = [[{"role": "user", "content": "What is 3 plus 4?"}],
           [{"role": "user", "content": "Reverse the letters: c a t"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort ascending: 5 2 9"}]]
ANSWERS = [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "t a c t a c"}],
           [{"role": "assistant", "content": "2 5 9"}]]


def reference_logp(model, tokenizer, prompt, answer):
    """One unpadded sequence, log_softmax by hand."""
    p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    picked = [logprobs[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids))]
    return sum(picked) / len(picked)


@pytest.mark.parametrize("fast", [False, True], ids=["readable", "engine"])
def test_batched_padded_scores_equal_one_by_one_reference(tiny, fast):
    model, tokenizer = tiny
    expected = [reference_logp(model, tokenizer, p, a) for p, a in zip(PROMPTS, ANSWERS)]
    for batch_size in (1, 2, 3):
        got = mean_answer_logps(model, tokenizer, PROMPTS, ANSWERS, batch_size=batch_size, fast=fast)
        assert got == pytest.approx(expected, abs=1e-5)


def test_preference_metrics_math():
    m = preference_metrics([-1.0, -2.0, -0.5], [-2.0, -1.0, -3.0], beta=0.1)
    assert m["reward_accuracy"] == pytest.approx(2 / 3)
    assert m["mean_margin"] == pytest.approx(0.1 * ((1.0 - 1.0 + 2.5) / 3))
    chosen_odds = math.log(math.exp(-1.0) / (1 - math.exp(-1.0)))
    rejected_odds = math.log(math.exp(-2.0) / (1 - math.exp(-2.0)))
    metrics = preference_metrics([-1.0], [-2.0], 0.1)
    assert metrics["log_odds_chosen"] == pytest.approx(chosen_odds - rejected_odds)  # TRL's name for mean log OR
    assert metrics["log_odds_ratio"] == pytest.approx(math.log(1 / (1 + math.exp(-(chosen_odds - rejected_odds)))))


def test_left_padded_batch_generation_equals_one_by_one(tiny):
    model, tokenizer = tiny
    side = tokenizer.padding_side
    together = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=3)
    alone = [generate_greedy(model, tokenizer, [p], max_new_tokens=5)[0] for p in PROMPTS]
    assert together == alone
    assert tokenizer.padding_side == side  # generation's left padding must not leak into training


@pytest.mark.parametrize("fast", [False, True], ids=["readable", "engine"])
def test_token_budget_batching_gives_the_same_scores(tiny, fast):
    model, tokenizer = tiny
    expected = [reference_logp(model, tokenizer, p, a) for p, a in zip(PROMPTS, ANSWERS)]
    for budget in (1, 20, 10_000):  # one sequence per batch, a few, all at once
        got = mean_answer_logps(model, tokenizer, PROMPTS, ANSWERS, max_batch_tokens=budget, fast=fast)
        assert got == pytest.approx(expected, abs=1e-5)


def test_scores_are_the_logps_orpo_trains_on(tiny, tmp_path):
    """Notebook 05's scorer and ORPOTrainer's chosen/rejected logps are the same quantity, same numbers."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer = tiny
    rejected = [[{"role": "assistant", "content": "5 2 9"}]] * len(PROMPTS)
    data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r}
                              for p, c, r in zip(PROMPTS, ANSWERS, rejected)])
    args = ORPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_length=64, report_to="none",
                      per_device_train_batch_size=len(PROMPTS))
    trainer = ORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))]))
    with torch.no_grad():
        chosen_trl, rejected_trl = trainer.concatenated_forward(model, batch)[:2]
    prompts = data["prompt"]
    for fast in (False, True):  # the readable scorer and the engine's
        chosen = mean_answer_logps(model, tokenizer, prompts, data["chosen"], fast=fast)
        rejected = mean_answer_logps(model, tokenizer, prompts, data["rejected"], fast=fast)
        assert chosen == pytest.approx(chosen_trl.tolist(), abs=1e-5)
        assert rejected == pytest.approx(rejected_trl.tolist(), abs=1e-5)
