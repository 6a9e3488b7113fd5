"""The fast held-out scorer (notebook 05 with `fast_orpo_trainer`) and the log-prob core the fast trainer shares.

`helpers.scoring.mean_answer_logps` is the readable reference: padded batches through the whole model, full logits.
This module computes the same numbers with less work (tests/test_scoring.py compares the two):
* the decoder runs without an attention mask where right padding makes it irrelevant (SDPA's fused causal kernel);
* the lm_head runs only at answer positions, a chunk of rows at a time (never [batch, length, vocab] at once);
* LoRA layers run as one autograd node each and attention is restricted to the fused backends (engine.kernels);
* with `share_prompt`, answers to the same prompt are scored in one packed, padding-free segment
  [prompt, answer 1, answer 2, ...] (engine.prefix_sharing): each prompt is computed once, not twice.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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


def _can_share(model) -> bool:
    """Prefix sharing runs on a CPU (dense mask) and on GPUs of compute capability >= 8 (varlen)."""
    from . import device_capability

    if next(model.parameters()).device.type != "cuda":
        return True
    capability = device_capability()
    if capability is not None and capability[0] < 8:
        print(f"share_prompt: off at compute capability {capability[0]}.{capability[1]} (no FlashAttention varlen "
              "kernel): chosen and rejected are scored as padded rows, the same scores.")
        return False
    return True


@contextmanager
def _fast_session(model, tokenizer):
    """helpers.scoring.scoring_session, plus the model's decoder stack and lm_head (run separately here)."""
    from helpers.scoring import scoring_session

    with scoring_session(model, tokenizer) as (device, pad, autocast):
        decoder, head = decoder_and_head(model)
        yield device, pad, decoder, head, autocast


@torch.no_grad()
def fast_answer_logps(model, tokenizer, encoded: list, batch_size: int | None = None, max_batch_tokens: int = 16384,
                      logits_chunk: int = 8192, share_prompt: bool = False,
                      share_prompt_backend: str = "auto") -> list[float]:
    """`helpers.scoring.mean_answer_logps(..., fast=True)`: the same scores, for `encoded` = its
    `encode_answers(tokenizer, prompts, answers)`.

    Sequences are sorted by length and packed into batches of at most `max_batch_tokens` padded tokens (and at most
    `batch_size` sequences, if given); half-precision models run under autocast in their own dtype, so fp32 LoRA
    weights and fp32 norms do not drag every activation into fp32; attention and LoRA use engine.kernels.

    share_prompt: answers whose prompts tokenize identically are packed together, the prompt computed once (see the
    module docstring); rows are packed up to `max_batch_tokens` real tokens, no padding. Same scores.
    """
    if share_prompt and not _can_share(model):
        share_prompt = False  # a T4 / V100: two padded rows per pair instead, same scores (engine.kernel_plan)
    if share_prompt:
        return _shared_answer_logps(model, tokenizer, encoded, max_batch_tokens, logits_chunk, share_prompt_backend)
    from helpers.scoring import padded_batches  # the same length-sorted, right-padded batches as the readable scorer

    result = [math.nan] * len(encoded)
    with _fast_session(model, tokenizer) as (device, pad, decoder, head, autocast):
        for idx, ids, labels, mask in padded_batches(encoded, pad, max_batch_tokens, batch_size):
            ids, labels, mask = ids.to(device), labels[:, 1:].to(device), mask.to(device)  # t predicts t+1
            with autocast, attention_backends(), fused_lora(model):
                hidden = run_decoder(decoder, ids, mask)[:, :-1]
                rows, cols = torch.nonzero(labels != -100, as_tuple=True)
                tok = token_logps(hidden[rows, cols], autocast_weight(head.weight), labels[rows, cols], logits_chunk)
            sums = torch.zeros(len(idx), device=tok.device, dtype=torch.float64).index_add_(0, rows, tok.double())
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
    with _fast_session(model, tokenizer) as (device, pad, decoder, head, autocast):
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


