"""Fast held-out evaluation (notebook 05) and the log-prob core the fast trainer shares (helpers.fast_orpo).

`Trainer.evaluate` on preference pairs recomputes the whole training loss and its metrics pair by pair, with full
[batch, length, vocab] logits in fp32, and was ~80% of the reference notebook's run time. Scoring only needs the
log-probs of the answer tokens: we sort sequences by length, pack them into batches of a token budget, run the
decoder without an attention mask (exact for right padding, and it lets SDPA use its fused causal kernel), and apply
the lm_head only at answer positions, a chunk of rows at a time.

With `share_prompt=True` answers to the same prompt are scored in one packed, padding-free segment
[prompt, answer 1, answer 2, ...] (helpers.prefix_sharing): score chosen and rejected in ONE call
(`mean_answer_logps(model, tok, prompts + prompts, chosen + rejected, share_prompt=True)`) and each prompt is
computed once instead of twice.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .chat import prompt_and_answer_texts, template_facts, trl_tokens
from .kernels import attention_backends, fused_lora

# ----------------------------------------------------------------------------------------------- log-prob core


def _chunk_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each row of `hidden` ([n, H]) under the lm_head `weight` ([V, H]), in fp32."""
    logits = F.linear(hidden, weight).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per-token log-probs for `hidden` [n, H] -> [n], `chunk` rows of logits at a time (never all [n, V] at once).

    Under grad each chunk is checkpointed: the forward keeps only the chunk's hidden rows, the backward recomputes its
    logits (one extra lm_head product, ~2% of a 7B model's FLOPs) instead of storing [n, V] floats.
    """
    pieces = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            pieces.append(checkpoint(_chunk_token_logps, h, weight, t, use_reentrant=False))
        else:
            pieces.append(_chunk_token_logps(h, weight, t))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def autocast_weight(weight: torch.Tensor) -> torch.Tensor:
    """Cast a frozen lm_head weight to the autocast dtype once per batch (autocast would recast it every chunk)."""
    device = weight.device.type
    if torch.is_autocast_enabled(device) and not weight.requires_grad:
        return weight.to(torch.get_autocast_dtype(device))
    return weight


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (embeddings -> last norm) and the lm_head of a (PEFT-wrapped) causal LM."""
    base = model
    while hasattr(base, "module"):  # DDP / accelerate wrappers
        base = base.module
    if hasattr(base, "get_base_model"):  # PeftModel -> the LoRA-injected transformers model
        base = base.get_base_model()
    return base.get_decoder(), base.get_output_embeddings()


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is 1...1 0...0 (real tokens first), i.e. no row has a 1 after a 0."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def run_decoder(decoder, input_ids, attention_mask, drop_mask: bool = True) -> torch.Tensor:
    """Last hidden states [B, L, H]; the mask is dropped when it cannot matter (right padding + causal attention:
    a real token never attends to a pad, since pads come after it)."""
    mask = None if (drop_mask and is_right_padded(attention_mask)) else attention_mask
    return decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state


# ----------------------------------------------------------------------------------------------- scoring


def compute_dtype_of(model) -> torch.dtype | None:
    """The half-precision dtype the model computes in (from its input embeddings), or None for fp32 models."""
    dtype = model.get_input_embeddings().weight.dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def encode_answers(tokenizer, prompts: list, answers: list) -> list[tuple[list[int], int]]:
    """Token ids of each prompt + answer and its prompt's length, exactly as TRL's ORPOTrainer builds them
    (helpers.chat.trl_tokens: template once, BOS/EOS rules), so held-out scores mean what training optimized.

    Renders the template to text, then tokenizes every text in one batched call (the fast tokenizer's Rust side),
    ~2x quicker than tokenizing one answer at a time.
    """
    texts = [prompt_and_answer_texts(tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    ids = tokenizer([p for p, _ in texts] + [p + a for p, a in texts], add_special_tokens=False)["input_ids"]
    n = len(texts)
    return [trl_tokens(tokenizer, *texts[i], full_ids=ids[n + i], prompt_ids=ids[i]) for i in range(n)]


@contextmanager
def _scoring_session(model, tokenizer):
    """What both scorers need: (device, pad id, decoder, lm_head, autocast in the model's own dtype), with the model
    in eval mode until the block ends (then its previous mode is restored)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, head = decoder_and_head(model)
    dtype = compute_dtype_of(model)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    was_training = model.training
    model.eval()
    try:
        yield device, pad, decoder, head, autocast
    finally:
        model.train(was_training)


@torch.no_grad()
def mean_answer_logps(model, tokenizer, prompts: list, answers: list, batch_size: int | None = None,
                      max_batch_tokens: int = 16384, logits_chunk: int = 8192, share_prompt: bool = False,
                      share_prompt_backend: str = "auto") -> list[float]:
    """Mean per-token log-prob of each answer given its prompt (answer tokens only, EOS included).

    This is exactly the quantity ORPO's odds ratio and its logged "rewards" (beta x this) are built from.
    Sequences are sorted by length and packed into batches of at most `max_batch_tokens` padded tokens (and at most
    `batch_size` sequences, if given); half-precision models run under autocast in their own dtype, so fp32 LoRA
    weights and fp32 norms do not drag every activation into fp32; attention and LoRA use helpers.kernels.

    share_prompt: answers whose prompts tokenize identically are packed together, the prompt computed once (see the
    module docstring); rows are packed up to `max_batch_tokens` real tokens, no padding. Same scores.
    """
    encoded = encode_answers(tokenizer, prompts, answers)
    if share_prompt:
        return _shared_answer_logps(model, tokenizer, encoded, max_batch_tokens, logits_chunk, share_prompt_backend)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # longest first: OOM shows at once
    result = [math.nan] * len(encoded)
    with _scoring_session(model, tokenizer) as (device, pad, decoder, head, autocast):
        start = 0
        while start < len(order):
            width = len(encoded[order[start]][0])  # the longest of this batch (sorted)
            n = max(1, min(len(order) - start, max_batch_tokens // width, batch_size or len(order)))
            idx = order[start:start + n]
            start += n
            ids = torch.full((n, width), pad, dtype=torch.long)
            labels = torch.full((n, width), -100, dtype=torch.long)
            mask = torch.zeros((n, width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq, prompt_len = encoded[i]
                ids[row, :len(seq)] = torch.tensor(seq)
                labels[row, prompt_len:len(seq)] = torch.tensor(seq[prompt_len:])
                mask[row, :len(seq)] = 1
            ids, labels, mask = ids.to(device), labels[:, 1:].to(device), mask.to(device)  # t predicts t+1
            with autocast, attention_backends(), fused_lora(model):
                hidden = run_decoder(decoder, ids, mask)[:, :-1]
                rows, cols = torch.nonzero(labels != -100, as_tuple=True)
                tok = token_logps(hidden[rows, cols], autocast_weight(head.weight), labels[rows, cols], logits_chunk)
            sums = torch.zeros(n, device=tok.device, dtype=torch.float64).index_add_(0, rows, tok.double())
            means = (sums / (labels != -100).sum(1).clamp(min=1)).tolist()  # one transfer per batch
            for row, i in enumerate(idx):
                result[i] = means[row]
    return result


def _shared_answer_logps(model, tokenizer, encoded, max_batch_tokens, logits_chunk, backend) -> list[float]:
    """mean_answer_logps(share_prompt=True): groups of answers to one prompt, packed into padding-free rows."""
    from .prefix_sharing import (common_prefix_len, copy_without_waiting, pack_groups, prefix_sharing_attention,
                                 resolve_backend, row_tokens_for, run_packed_decoder)

    groups: dict[tuple, list[int]] = {}
    for i, (seq, prompt_len) in enumerate(encoded):
        groups.setdefault(tuple(seq[:prompt_len]), []).append(i)
    def packed_len(members):
        seqs = [encoded[i][0] for i in members]
        p = common_prefix_len(seqs)
        return p + sum(len(s) - p for s in seqs)
    sized = sorted(((packed_len(m), m) for m in groups.values()), key=lambda x: -x[0])  # longest first: OOM at once
    rows, row, used = [], [], 0
    for size, members in sized:
        if row and used + size > max_batch_tokens:
            rows.append(row)
            row, used = [], 0
        row.append(members)
        used += size
    if row:
        rows.append(row)

    # nothing below waits for the GPU until the end: the plan is built on the CPU and the means stay on the GPU,
    # so the CPU packs the next row while the GPU computes this one (one transfer of all the scores at the end)
    orders, means = [], []
    with _scoring_session(model, tokenizer) as (device, pad, decoder, head, autocast):
        backend = resolve_backend(backend, device)
        for row in rows:
            order = [i for members in row for i in members]  # sequence k of the packed row = encoded[order[k]]
            packed = pack_groups([[encoded[i][0] for i in members] for members in row], pad_id=pad,
                                 pack_multiple=128 if backend == "flex" else 1, row_tokens=row_tokens_for(backend))
            hidden_idx, targets, which, counts = [], [], [], []
            for k, i in enumerate(order):
                seq, prompt_len = encoded[i]
                t = torch.arange(max(prompt_len, 1), len(seq))  # answer tokens, each predicted at t - 1
                hidden_idx.append(packed.index[k][t - 1])
                targets.append(torch.tensor(seq)[t])
                which.append(torch.full((len(t),), k))
                counts.append(torch.tensor([max(len(t), 1)], dtype=torch.float64))
            hidden_idx, targets, which, counts = (copy_without_waiting(torch.cat(x), device)
                                                  for x in (hidden_idx, targets, which, counts))
            with autocast, attention_backends(), fused_lora(model), prefix_sharing_attention(model):
                hidden = run_packed_decoder(decoder, packed.to(device, backend), backend)
                tok = token_logps(hidden[hidden_idx], autocast_weight(head.weight), targets, logits_chunk)
            sums = torch.zeros(len(order), device=tok.device, dtype=torch.float64).index_add_(0, which, tok.double())
            orders += order
            means.append(sums / counts)
    result = [math.nan] * len(encoded)
    for i, mean in zip(orders, torch.cat(means).tolist() if means else [], strict=True):
        result[i] = mean
    return result


def preference_metrics(chosen_logps: list[float], rejected_logps: list[float], beta: float) -> dict:
    """Reward accuracy and margins in ORPO's units (reward = beta x mean log-prob)."""
    chosen, rejected = torch.tensor(chosen_logps), torch.tensor(rejected_logps)
    margins = beta * (chosen - rejected)
    # log OR = log odds(chosen) - log odds(rejected), odds = p / (1 - p) with p = exp(mean log-prob). Named as TRL
    # logs them: `log_odds_chosen` = mean log OR, `log_odds_ratio` = mean log sigmoid(log OR) (ORPO's term, <= 0).
    log_or = (chosen - rejected) - (torch.log1p(-chosen.exp()) - torch.log1p(-rejected.exp()))
    return {"reward_accuracy": (chosen > rejected).float().mean().item(),
            "mean_margin": margins.mean().item(),
            "log_odds_chosen": log_or.mean().item(),
            "log_odds_ratio": torch.nn.functional.logsigmoid(log_or).mean().item(),
            "mean_chosen_logp": chosen.mean().item(),
            "mean_rejected_logp": rejected.mean().item(),
            "n_pairs": len(chosen_logps)}


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy completions for conversational prompts (notebooks 03, 05), batched with LEFT padding (right padding
    would put pad tokens between a prompt and its continuation). The prompt starts as in training (BOS added when
    the template has none, as TRL does) and generation stops at EOS or the template's end-of-turn token."""
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
                                       pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o.strip() for o in outputs]
