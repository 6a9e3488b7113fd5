"""Fast held-out evaluation: batched, no-grad log-prob scoring and greedy generation (notebook 05).

`Trainer.evaluate` on preference pairs recomputes the whole training loss and its metrics pair by pair and
was ~80% of the reference notebook's run time. Scoring only needs one forward pass per answer: we sort by
length (little padding), batch, and keep nothing but two numbers per pair.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import _ids


def _encode_answer(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], int]:
    """Token ids of prompt + answer (template applied once) and the prompt's length."""
    prompt_len = len(_ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)))
    return _ids(tokenizer.apply_chat_template(prompt + answer, tokenize=True)), prompt_len


@torch.no_grad()
def mean_answer_logps(model, tokenizer, prompts: list, answers: list, batch_size: int = 16) -> list[float]:
    """Mean per-token log-prob of each answer given its prompt (answer tokens only, EOS included).

    This is exactly the quantity ORPO's odds ratio and its logged "rewards" (beta x this) are built from.
    """
    encoded = [_encode_answer(tokenizer, p, a) for p, a in zip(prompts, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = [math.nan] * len(encoded)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq, prompt_len = encoded[i]
            ids[row, :len(seq)] = torch.tensor(seq)
            labels[row, prompt_len:len(seq)] = torch.tensor(seq[prompt_len:])
            mask[row, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        labels = labels[:, 1:].to(device)  # token t is predicted from positions < t
        token_logps = -F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
        answer_mask = labels != -100
        means = (token_logps * answer_mask).sum(-1) / answer_mask.sum(-1).clamp(min=1)
        for row, i in enumerate(idx):
            result[i] = means[row].item()
    model.train(was_training)
    return result


def preference_metrics(chosen_logps: list[float], rejected_logps: list[float], beta: float) -> dict:
    """Reward accuracy and margins in ORPO's units (reward = beta x mean log-prob)."""
    chosen, rejected = torch.tensor(chosen_logps), torch.tensor(rejected_logps)
    margins = beta * (chosen - rejected)
    # log odds = log(p / (1 - p)) with p = exp(mean log-prob); ORPO's loss pushes this up for chosen.
    log_odds = (chosen - rejected) - (torch.log1p(-chosen.exp()) - torch.log1p(-rejected.exp()))
    return {"reward_accuracy": (chosen > rejected).float().mean().item(),
            "mean_margin": margins.mean().item(),
            "mean_log_odds_ratio": log_odds.mean().item(),
            "mean_chosen_logp": chosen.mean().item(),
            "mean_rejected_logp": rejected.mean().item(),
            "n_pairs": len(chosen_logps)}


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy completions for conversational prompts, batched with LEFT padding (right padding would put
    pad tokens between a prompt and its continuation)."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    outputs = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)  # the template already holds BOS
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o.strip() for o in outputs]
