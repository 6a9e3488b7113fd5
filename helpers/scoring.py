"""Held-out scoring (notebook 05: one no-grad forward pass per answer, not `Trainer.evaluate`; `fast=True` uses
engine.scoring) and greedy generation (notebooks 03, 05)."""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch

from .chat import prompt_and_answer_texts, template_facts, trl_tokens


def encode_answers(tokenizer, prompts: list, answers: list) -> list[tuple[list[int], int]]:
    """Ids of each prompt + answer and its prompt length as ORPOTrainer builds them (`chat.trl_tokens`), batched."""
    texts = [prompt_and_answer_texts(tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    ids = tokenizer([p for p, _ in texts] + [p + a for p, a in texts], add_special_tokens=False)["input_ids"]
    n = len(texts)
    return [trl_tokens(tokenizer, *texts[i], full_ids=ids[n + i], prompt_ids=ids[i]) for i in range(n)]


@contextmanager
def scoring_session(model, tokenizer):
    """(device, pad id, autocast in the model's half-precision dtype), the model in eval mode until the block ends."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dtype = model.get_input_embeddings().weight.dtype  # the half-precision dtype it computes in, if any
    autocast = torch.autocast(device.type, dtype=dtype) if dtype in (torch.float16, torch.bfloat16) else nullcontext()
    was_training = model.training
    model.eval()
    try:
        yield device, pad, autocast
    finally:
        model.train(was_training)


def padded_batches(encoded: list, pad: int, max_batch_tokens: int, batch_size: int | None = None):
    """Right-padded batches, longest first, of at most `max_batch_tokens` padded tokens and `batch_size` rows: (indices
    into `encoded`, ids, labels with -100 off the answers, attention mask); engine.scoring uses them too."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    start = 0
    while start < len(order):
        width = len(encoded[order[start]][0])
        n = max(1, min(len(order) - start, max_batch_tokens // width, batch_size or len(order)))
        idx, start = order[start:start + n], start + n
        ids = torch.full((n, width), pad, dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq, prompt_len = encoded[i]
            ids[row, :len(seq)] = torch.tensor(seq)
            labels[row, prompt_len:len(seq)] = torch.tensor(seq[prompt_len:])
            mask[row, :len(seq)] = 1
        yield idx, ids, labels, mask


@torch.no_grad()
def mean_answer_logps(model, tokenizer, prompts: list, answers: list, batch_size: int | None = None,
                      max_batch_tokens: int | None = None, fast: bool = False, share_prompt: bool = False,
                      share_prompt_backend: str = "auto") -> list[float]:
    """Mean per-token log-prob of each answer given its prompt (answer tokens only, EOS included; notebook 05), in
    `padded_batches`; fast / share_prompt: engine.scoring.fast_answer_logps (defaults: docs/design-decisions.md)."""
    encoded = encode_answers(tokenizer, prompts, answers)
    if fast or share_prompt:
        from engine.scoring import fast_answer_logps
        return fast_answer_logps(model, tokenizer, encoded, batch_size, max_batch_tokens or 16384,
                                 share_prompt=share_prompt, share_prompt_backend=share_prompt_backend)
    max_batch_tokens = max_batch_tokens or 4096
    result = [math.nan] * len(encoded)
    with scoring_session(model, tokenizer) as (device, pad, autocast):
        for idx, ids, labels, mask in padded_batches(encoded, pad, max_batch_tokens, batch_size):
            with autocast:
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            labels = labels[:, 1:].to(device)  # the logits at position t predict token t + 1
            logps = logits[:, :-1].float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
            is_answer = labels != -100
            means = ((logps * is_answer).sum(1) / is_answer.sum(1).clamp(min=1)).tolist()
            for row, i in enumerate(idx):
                result[i] = means[row]
    return result


def preference_metrics(chosen_logps: list[float], rejected_logps: list[float], beta: float) -> dict:
    """Reward accuracy and margins in ORPO's units (reward = beta x mean log-prob)."""
    chosen, rejected = torch.tensor(chosen_logps), torch.tensor(rejected_logps)
    margins = beta * (chosen - rejected)
    # log OR = log odds(chosen) - log odds(rejected), odds = p / (1 - p) with p = exp(mean log-prob). Named as TRL
    # logs them: `log_odds_chosen` = mean log OR, `log_odds_ratio` = mean log sigmoid(log OR) (ORPO's term, <= 0).
    log_or = (chosen - rejected) - (torch.log1p(-chosen.exp()) - torch.log1p(-rejected.exp()))
    return {"reward_accuracy": (chosen > rejected).float().mean().item(), "mean_margin": margins.mean().item(),
            "log_odds_chosen": log_or.mean().item(),
            "log_odds_ratio": torch.nn.functional.logsigmoid(log_or).mean().item(),
            "mean_chosen_logp": chosen.mean().item(), "mean_rejected_logp": rejected.mean().item(),
            "n_pairs": len(chosen_logps)}


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int = 32, streamer=None):
    """Greedy completions (strings) for conversational prompts (notebooks 03, 05), batched with LEFT padding. The
    prompt starts as in training (BOS added when the template has none, as TRL does); generation stops at EOS or the
    template's end-of-turn token. `streamer` also receives the tokens as they come (helpers.chat.stream_reply)."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    bos = tokenizer.bos_token or ""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    texts = [t if not bos or t.startswith(bos) else bos + t for t in texts]
    stops = list(template_facts(tokenizer).stop_token_ids) or None
    outputs = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)  # the text already holds BOS
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                       pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                       streamer=streamer)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o.strip() for o in outputs]
