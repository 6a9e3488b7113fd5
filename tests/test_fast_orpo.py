"""FastORPOTrainer computes TRL's ORPO loss (and both of its parts), only faster.

CPU, offline, seconds: a tiny random MistralForCausalLM (hidden 64, 2 layers, vocab 300) and a word-level tokenizer
built with `tokenizers`. Pairs have varied prompt and answer lengths so that padding, prompt masking and the
"drop the mask when right-padded" shortcut are all exercised.
"""

import os
import random

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from engine.fast_orpo import FastORPOTrainer, LengthGroupedPairSampler, longest_batch_tokens
from engine.scoring import is_right_padded

VOCAB = 300
RTOL = 1e-3


def _tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(VOCAB - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")


def _pairs(n=8, seed=0):
    rng = random.Random(seed)
    words = lambda k: " ".join(f"w{rng.randrange(VOCAB - 3)}" for _ in range(k))  # noqa: E731
    return [{"prompt": words(rng.randint(2, 12)), "chosen": " " + words(rng.randint(1, 20)),
             "rejected": " " + words(rng.randint(1, 20))} for _ in range(n)]


def _tiny_mistral(layers: int = 2) -> MistralForCausalLM:
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return MistralForCausalLM(cfg).float()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = _tiny_mistral()
    tok = _tokenizer()
    args = ORPOConfig(output_dir=str(tmp_path_factory.mktemp("orpo")), bf16=False, use_cpu=True, beta=0.1,
                      max_length=64, per_device_train_batch_size=4, gradient_checkpointing=False, report_to="none")
    data = Dataset.from_list(_pairs())
    trl = ORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    fast = FastORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    batch = trl._prepare_inputs(trl.data_collator([trl.train_dataset[i] for i in range(len(data))]))
    return model, trl, fast, batch


def _rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def test_batch_is_padded_and_varied(setup):
    _, trl, _, batch = setup
    mask = trl.concatenated_inputs(batch, padding_value=0)["concatenated_attention_mask"]
    assert (mask == 0).any(), "the fixed batch must contain padding, or the mask shortcut is untested"
    assert is_right_padded(mask)
    assert not is_right_padded(mask.flip(1))


def test_loss_and_both_parts_match_trl(setup):
    model, trl, fast, batch = setup
    model.eval()
    with torch.no_grad():
        loss_t, m_t = trl.get_batch_loss_metrics(model, batch)
        loss_f, m_f = fast.get_batch_loss_metrics(model, batch)
    assert _rel(loss_f, loss_t) < RTOL
    for key in ["nll_loss", "log_odds_ratio", "log_odds_chosen", "logps/chosen", "logps/rejected",
                "rewards/margins"]:
        assert _rel(m_f[key], m_t[key]) < RTOL, (key, m_f[key], m_t[key])
    # The logged mean logit averages pad positions too (as TRL's does); their values depend on the mask, so this
    # one metric matches only with the mask kept. Nothing the loss reads depends on it (checked above).
    fast.drop_padding_mask = False
    try:
        with torch.no_grad():
            m_f = fast.get_batch_loss_metrics(model, batch)[1]
    finally:
        fast.drop_padding_mask = True
    for key in ["logits/chosen", "logits/rejected"]:
        assert _rel(m_f[key], m_t[key]) < RTOL, (key, m_f[key], m_t[key])
    # The NLL and odds-ratio parts are not trivially equal (a guard against a degenerate test).
    assert abs(m_t["nll_loss"]) > 1.0 and abs(m_t["log_odds_ratio"]) > 1e-3


def test_gradients_match_trl(setup):
    model, trl, fast, batch = setup
    model.train()
    grads = []
    for trainer in (trl, fast):
        model.zero_grad()
        trainer.get_batch_loss_metrics(model, batch)[0].backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert _rel(grads[1][name], grads[0][name]) < RTOL, name
    model.zero_grad()


def test_chunking_and_mask_do_not_change_the_loss(setup):
    model, _, fast, batch = setup
    model.eval()
    with torch.no_grad():
        ref = fast.get_batch_loss_metrics(model, batch)[0]
        fast.logits_chunk, fast.drop_padding_mask = 7, False  # tiny chunks, mask kept
        try:
            other = fast.get_batch_loss_metrics(model, batch)[0]
        finally:
            fast.logits_chunk, fast.drop_padding_mask = FastORPOTrainer.logits_chunk, True
    assert _rel(other, ref) < 1e-5


def test_length_grouped_sampler():
    rng = random.Random(1)
    lengths = [rng.randint(10, 1000) for _ in range(203)]
    idx = list(LengthGroupedPairSampler(lengths, batch_size=8, mega_batch_mult=5, seed=3))
    assert sorted(idx) == list(range(len(lengths)))  # a permutation: every pair once
    batches = [idx[i : i + 8] for i in range(0, len(idx), 8)]
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest first: OOM at step 1
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    padded_random = sum(8 * max(lengths[i] for i in shuffled[j : j + 8]) for j in range(0, len(shuffled), 8))
    assert padded < 0.75 * padded_random  # much less padding than random batches


@pytest.mark.parametrize("bf16", [True, False])
def test_evaluation_steps_autocast_like_training_steps(setup, bf16, monkeypatch):
    """TRL's prediction_step calls the loss itself, not through compute_loss: the evaluation must open the same
    autocast as training (it did not, and an fp16 run evaluated in fp32, 9x slower on an H100)."""
    model, _, fast, batch = setup
    seen = []
    real = FastORPOTrainer.concatenated_forward

    def spy(self, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FastORPOTrainer, "concatenated_forward", spy)
    monkeypatch.setattr(fast.args, "bf16", bf16)
    model.eval()
    fast.prediction_step(model, batch, prediction_loss_only=True)
    with torch.no_grad():
        fast.compute_loss(model, batch)
    expected = (True, torch.bfloat16) if bf16 else (False, torch.get_autocast_dtype("cpu"))
    assert seen == [expected, expected]
    assert fast._peft_has_been_casted_to_bf16 is False  # restored


# ------------------------------------------------------------------------------------------- checkpointing per batch


def test_checkpointed_layers_are_the_fewest_that_keep_the_longest_batchs_memory():
    from engine.fast_orpo import checkpointed_layers

    n, k, ref = 32, 22, 26_000
    assert checkpointed_layers(ref, ref, n, k) == k  # the longest batch: k, as configured
    assert checkpointed_layers(ref // 2, ref, n, k) == 12  # half the tokens: twice the un-checkpointed layers
    assert checkpointed_layers(ref // 4, ref, n, k) == 0
    assert checkpointed_layers(2 * ref, ref, n, k) == 27  # longer than expected: more checkpointing, not less
    assert checkpointed_layers(100, ref, n, 0) == 0 and checkpointed_layers(100, ref, n, n) == n
    for tokens in range(500, 60_000, 777):
        got = checkpointed_layers(tokens, ref, n, k)
        assert (n - got) * tokens <= (n - k) * ref  # within the longest batch's activation memory
        assert got == 0 or (n - got + 1) * tokens > (n - k) * ref  # and no layer more than that needs


@pytest.mark.parametrize("share", [True, False])
def test_longest_batch_tokens_bounds_every_batch_the_decoder_runs(setup, share):
    """The reference is an upper bound: a real batch, packed or padded as the trainer runs it, is never longer."""
    from engine.fast_orpo import longest_batch_tokens

    model, _, fast, _ = setup
    bound = longest_batch_tokens(fast.train_dataset, 4, share, fast.pack_multiple)
    seen = []
    real = FastORPOTrainer._size_checkpointing
    fast.share_prompt = share
    try:
        FastORPOTrainer._size_checkpointing = lambda self, model, tokens: seen.append(tokens)
        rows = [fast.train_dataset[i] for i in range(len(fast.train_dataset))]
        longest_first = sorted(rows, key=lambda r: -(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"])))
        with torch.no_grad():
            for batch_rows in (longest_first[:4], rows[:4], rows[4:]):
                fast.concatenated_forward(model, fast._prepare_inputs(fast.data_collator(batch_rows)))
    finally:
        FastORPOTrainer._size_checkpointing = real
        fast.share_prompt = False
    assert len(seen) == 3 and max(seen) <= bound
    assert max(seen) > bound // 2  # and not a loose one


def test_adaptive_checkpointing_recomputes_fewer_layers_for_a_short_batch_with_the_same_gradients(tmp_path):
    torch.manual_seed(0)
    model = _tiny_mistral(layers=4)
    args = ORPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, beta=0.1, max_length=64,
                      per_device_train_batch_size=8, gradient_checkpointing=True, report_to="none")
    fast = FastORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_pairs(8)),
                           processing_class=_tokenizer())
    fast.checkpoint_layers = 3
    rows = [fast.train_dataset[i] for i in range(8)]
    short = sorted(rows, key=lambda r: len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]))[:2]
    batch = fast._prepare_inputs(fast.data_collator(short))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as train() does
    layers = fast.model.model.layers
    calls = []  # a checkpointed layer's attention runs twice: forward, and again in the backward
    for layer in layers:
        layer.self_attn.register_forward_pre_hook(lambda m, a: calls.append(m))
    grads = {}
    for adaptive in (False, True):
        fast.adaptive_checkpointing = adaptive
        fast._checkpointing_applied = False
        fast.checkpoint_reference_tokens = None
        model.train()
        model.zero_grad()
        calls.clear()
        fast.compute_loss(fast.model, batch).backward()
        grads[adaptive] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        flags = [bool(layer.gradient_checkpointing) for layer in layers]
        if adaptive:
            assert fast.checkpoint_reference_tokens == longest_batch_tokens(fast.train_dataset, 8, False)
            assert fast.last_checkpointed_layers < 3 and flags == [i < fast.last_checkpointed_layers for i in range(4)]
        else:
            assert flags == [True, True, True, False]
        assert len(calls) == len(layers) + sum(flags)  # each checkpointed layer ran again in the backward, no other
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-6, atol=1e-7)
