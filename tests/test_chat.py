"""Any causal LM's chat template: what TRL builds, what notebook 02 checks, and which errors it raises.

The tokenizers are the offline default's BPE with the special tokens of real template families added: ChatML
(SmolLM2 / Qwen: `<|im_start|>` as BOS at every turn, `<|im_end|>` as EOS), Llama-3 (BOS inside the template,
turns end with `<|eot_id|>`, which is not the EOS), Gemma (raises on a system turn), and this series' own template.
`trl_tokens` must equal trl's `ORPOTrainer.tokenize_row` on every one of them.
"""

import copy
import functools
import types

import pytest
from trl.data_utils import maybe_apply_chat_template
from trl.experimental.orpo import ORPOTrainer

from offline_default import build as od
from helpers.chat import (CHAT_TEMPLATE, ChatTemplateError, check_for_trl, fold_system_turn, prompt_and_answer_texts,
                          template_facts, trl_tokens)
from helpers.scoring import encode_answers

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}"
          "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
         "{{ raise_exception('System role not supported') }}{% endif %}"
         "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

EXAMPLE = {"prompt": [{"role": "user", "content": "Sort ascending: 3 1 2"}],
           "chosen": [{"role": "assistant", "content": "1 2 3"}],
           "rejected": [{"role": "assistant", "content": "3 2 1"}]}


@pytest.fixture(scope="module")
def base_tokenizer():
    examples = od.build_examples(seed=0)
    return od.train_tokenizer(od.tokenizer_training_texts(od.pretraining_conversations(examples)))


def flavour(base, name):
    tok = copy.deepcopy(base)
    if name == "ours":
        tok.chat_template = CHAT_TEMPLATE
    elif name == "chatml":
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.bos_token, tok.eos_token, tok.pad_token, tok.chat_template = "<|im_start|>", "<|im_end|>", None, CHATML
    elif name == "llama3":
        tok.add_special_tokens({"additional_special_tokens": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                                                             "<|start_header_id|>", "<|end_header_id|>"]})
        tok.bos_token, tok.eos_token, tok.chat_template = "<|begin_of_text|>", "<|end_of_text|>", LLAMA3
    elif name == "gemma":
        tok.add_special_tokens({"additional_special_tokens": ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]})
        tok.bos_token, tok.eos_token, tok.chat_template = "<bos>", "<eos>", GEMMA
    return tok


def trl_row(tok, example, max_length=10**6):
    """What trl 1.16's ORPOTrainer tokenizes for one row (its own functions, no trainer needed)."""
    ns = types.SimpleNamespace(processing_class=tok, is_encoder_decoder=False, max_length=max_length)
    ns.build_tokenized_answer = functools.partial(ORPOTrainer.build_tokenized_answer, ns)
    return ORPOTrainer.tokenize_row(ns, maybe_apply_chat_template(example, tok))


FLAVOURS = ["ours", "chatml", "llama3", "gemma"]


@pytest.mark.parametrize("name", FLAVOURS)
def test_our_tokens_equal_trls_for_every_template_family(base_tokenizer, name):
    tok = flavour(base_tokenizer, name)
    row = trl_row(tok, EXAMPLE)
    for answer in ("chosen", "rejected"):
        ids, prompt_len = check_for_trl(tok, EXAMPLE, answer)  # valid templates pass the check
        assert ids == row[f"{answer}_input_ids"]
        assert prompt_len == row[f"{answer}_labels"].count(-100)
        # the scorer of notebook 05 builds the same tokens, in a batch
        assert encode_answers(tok, [EXAMPLE["prompt"]], [EXAMPLE[answer]]) == [(ids, prompt_len)]


def test_chatml_bos_at_every_turn_is_not_a_doubled_bos(base_tokenizer):
    tok = flavour(base_tokenizer, "chatml")
    ids, _ = check_for_trl(tok, EXAMPLE)
    assert ids.count(tok.bos_token_id) == 3 and ids[1] != tok.bos_token_id  # system, user, assistant turns


def test_end_of_turn_that_is_not_eos_stops_generation(base_tokenizer):
    facts = template_facts(flavour(base_tokenizer, "llama3"))
    tok = flavour(base_tokenizer, "llama3")
    assert facts.end_of_turn == "<|eot_id|>"
    assert facts.stop_token_ids == (tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>"))
    assert template_facts(flavour(base_tokenizer, "ours")).stop_token_ids == (base_tokenizer.eos_token_id,)


def test_template_that_rejects_a_system_turn_gets_it_folded_into_the_user_turn(base_tokenizer):
    tok = flavour(base_tokenizer, "gemma")
    assert not template_facts(tok).accepts_system_turn
    with_system = {**EXAMPLE, "prompt": [{"role": "system", "content": "Be brief."}, *EXAMPLE["prompt"]]}
    folded = fold_system_turn(with_system)
    assert folded["prompt"] == [{"role": "user", "content": "Be brief.\n\nSort ascending: 3 1 2"}]
    check_for_trl(tok, folded)
    assert template_facts(flavour(base_tokenizer, "chatml")).accepts_system_turn


def test_no_eos_token_is_one_clear_error(base_tokenizer):
    tok = flavour(base_tokenizer, "ours")
    tok.eos_token = None
    with pytest.raises(ChatTemplateError, match="no EOS token.*Fix: set tokenizer.eos_token"):
        check_for_trl(tok, EXAMPLE)


def test_doubled_bos_is_one_clear_error(base_tokenizer):
    tok = flavour(base_tokenizer, "ours")
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    with pytest.raises(ChatTemplateError, match="starts with two BOS tokens.*Fix"):
        check_for_trl(tok, EXAMPLE)


def test_template_that_drops_the_answer_is_one_clear_error(base_tokenizer):
    tok = flavour(base_tokenizer, "ours")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}"
                         "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ ' =>' }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="answer's text is not in the answer tokens"):
        check_for_trl(tok, EXAMPLE)


def test_prompt_tokens_that_are_not_a_prefix_are_one_clear_error(base_tokenizer):
    """A tokenizer whose prompt tokens change by more than TRL's one-token merge (forced with a wrapper)."""
    real = flavour(base_tokenizer, "ours")
    prompt_text, answer_text = prompt_and_answer_texts(real, EXAMPLE["prompt"], EXAMPLE["chosen"])

    class Shifting:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, text, **kw):
            ids = real(text, **kw)["input_ids"]
            return {"input_ids": ids[:-2] + [7, 7] if text == prompt_text else ids}

    with pytest.raises(ChatTemplateError, match="not a prefix of prompt \\+ answer"):
        check_for_trl(Shifting(), EXAMPLE)
    assert trl_tokens(real, prompt_text, answer_text)[0] == trl_row(real, EXAMPLE)["chosen_input_ids"]
