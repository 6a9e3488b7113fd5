"""Prefix sharing: compute a prompt once for all of its answers, in one padding-free packed row.

ORPO's batch holds every pair twice: [prompt, chosen] and [prompt, rejected], each padded to the batch's longest
sequence. The prompt's hidden states are the same in both rows (causal attention: a prompt token never sees the
answer), so half of the prompt work is wasted, and so is every pad. Here each pair (more generally: each *group* of
sequences that start with the same tokens) becomes ONE segment of a packed row:

    [ shared prefix | tail of sequence 1 | tail of sequence 2 | ... ]   (pairs: [prompt | chosen | rejected])
      positions 0..P-1   P..L1-1            P..L2-1                 (position ids restart at P for every tail)

and the segments of all groups are concatenated into one row, padded only at the end (to a multiple of
`pack_multiple`). (The dense-mask path splits the groups over several rows of at most `row_tokens` tokens: its
mask and attention cost grow with the square of a row's length.) Attention is restricted so that every token sees exactly what it would see in its own unpadded
sequence:

    q may attend kv  <=>  same group  and  kv <= q (packed order)  and  (kv is in the prefix  or  kv in q's own tail)

With the same position ids (RoPE) and the same visible keys, each token's hidden state equals the one the unshared
forward computes, so every log-prob is the same number, up to floating-point summation order.

The shared prefix is the longest common *token* prefix of the group's sequences, which is at least the prompt
(TRL may shift the prompt/answer boundary by one token when the tokenizer merges across it; answers that begin with
the same words share those too). The token at virtual position v of a sequence is predicted by its hidden state at
v - 1; for the first token of a tail that state lies in the shared prefix (for pairs: the prompt's last position,
which also predicts the first chosen token). `PackedGroups.index` maps (sequence, virtual position) -> packed
position, so callers gather hidden states without caring where a token physically sits.

Two ways to apply the mask, chosen by `backend`:
  * "flex": PyTorch FlexAttention with a BlockMask built from per-token group and segment ids. Blocks that no query
    may see are skipped, so attention costs only what the groups need (GPU; compiled once with torch.compile).
  * "dense": a [1, 1, T, T] boolean mask given to scaled_dot_product_attention. Exact everywhere, O(T^2) memory:
    the CPU path and the reference the tests compare flex against. ("flex_eager" runs flex uncompiled: forward only
    on CPU, used by tests to check the BlockMask itself.)
The decoder is called with that mask and the packed position ids; transformers uses a 4D mask / BlockMask as given.
A registered attention function (`attention_implementation`) applies it and hands every other call (an ordinary
2D mask, generation, ...) to the model's own attention implementation unchanged.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flex", "flex_eager", "dense")

# ----------------------------------------------------------------------------------------------- packing


def common_prefix_len(sequences: list[list[int]]) -> int:
    """Length of the longest token prefix shared by all `sequences`."""
    if not sequences:
        return 0
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in sequences[1:]):
            return i
    return n


DENSE_ROW_TOKENS = 4096  # the dense (CPU) path's row budget; FlexAttention takes everything in one row


@dataclass
class PackedGroups:
    """Packed rows: `input_ids` / `position_ids` [R, W], per-token `group` and `segment` ids [R, W] (pads: group -1),
    and `index[k]`: LongTensor [len(sequence k)] mapping each virtual position of sequence k to its position in the
    flattened rows (row * W + column; sequences numbered in input order, group by group). R = 1 unless `row_tokens`
    split the groups."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    group: torch.Tensor
    segment: torch.Tensor
    index: list[torch.Tensor]
    prefix_lens: list[int]
    n_real: int  # packed tokens before the end padding

    def to(self, device) -> PackedGroups:
        mv = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedGroups(mv(self.input_ids), mv(self.position_ids), mv(self.group), mv(self.segment),
                            [mv(i) for i in self.index], self.prefix_lens, self.n_real)


def pack_groups(groups: list[list[list[int]]], pad_id: int = 0, pack_multiple: int = 1,
                row_tokens: int | None = None) -> PackedGroups:
    """Pack groups of token sequences (each group's sequences share a prefix, e.g. [chosen_ids, rejected_ids]) into
    one row: per group [common prefix, tail 1, tail 2, ...], groups back to back, then pads up to a multiple of
    `pack_multiple`. Segment ids: 0 = shared prefix, k = tail of the group's k-th sequence. With `row_tokens`, a new
    row starts whenever the next group would take a row past that many tokens (rows are padded to the longest)."""
    rows, row, index, prefix_lens = [], None, [], []
    for g, seqs in enumerate(groups):
        p = common_prefix_len(seqs)
        size = p + sum(len(s) - p for s in seqs)
        if row is None or (row_tokens is not None and row[0] and len(row[0]) + size > row_tokens):
            row = ([], [], [], [])
            rows.append(row)
        ids, pos, grp, seg = row
        base = (len(rows) - 1, len(ids))  # (row, column) of this group's first token; flattened below
        start = len(ids)
        ids += seqs[0][:p]
        pos += range(p)
        grp += [g] * p
        seg += [0] * p
        prefix_lens.append(p)
        for k, s in enumerate(seqs, start=1):
            tail_start = len(ids)
            ids += s[p:]
            pos += range(p, len(s))
            grp += [g] * (len(s) - p)
            seg += [k] * (len(s) - p)
            virtual = torch.arange(len(s))
            index.append((base[0], torch.where(virtual < p, start + virtual, tail_start + virtual - p)))
    if not rows:
        rows.append(([], [], [], []))
    n_real = sum(len(r[0]) for r in rows)
    width = max(1, -(-max(len(r[0]) for r in rows) // pack_multiple) * pack_multiple)
    for ids, pos, grp, seg in rows:
        pad = width - len(ids)
        ids += [pad_id] * pad
        pos += range(pad)  # pads: their own causal run, seen by no real token
        grp += [-1] * pad
        seg += [0] * pad
    as_long = lambda k: torch.tensor([r[k] for r in rows], dtype=torch.long)  # noqa: E731
    flat = [r * width + cols for r, cols in index]
    return PackedGroups(as_long(0), as_long(1), as_long(2), as_long(3), flat, prefix_lens, n_real)


# ----------------------------------------------------------------------------------------------- masks


def dense_mask(packed: PackedGroups) -> torch.Tensor:
    """[R, 1, W, W] boolean mask (True = may attend) of the rule in the module docstring."""
    g, s = packed.group, packed.segment
    t = torch.arange(g.shape[1], device=g.device)
    allowed = ((g[:, :, None] == g[:, None, :]) & (t[None, None, :] <= t[None, :, None])
               & ((s[:, None, :] == 0) | (s[:, None, :] == s[:, :, None])))
    return allowed[:, None]


def block_mask(packed: PackedGroups, block_size: int = 128):
    """The same rule as a FlexAttention BlockMask (blocks with no allowed pair are skipped by the kernel)."""
    from torch.nn.attention.flex_attention import create_block_mask

    g, s = packed.group, packed.segment

    def mask_mod(b, h, q, kv):
        return (g[b, q] == g[b, kv]) & (kv <= q) & ((s[b, kv] == 0) | (s[b, kv] == s[b, q]))

    rows, n = g.shape
    return create_block_mask(mask_mod, rows, None, n, n, device=g.device, BLOCK_SIZE=block_size)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"prefix-sharing attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "flex" if device.type == "cuda" else "dense"
    return backend


def packed_mask(packed: PackedGroups, backend: str):
    """The mask object the decoder gets for `packed` under `backend` ("dense" / "flex" / "flex_eager")."""
    return dense_mask(packed) if backend == "dense" else _tagged(block_mask(packed), eager=backend == "flex_eager")


def _tagged(mask, eager: bool):
    mask._prefix_sharing_eager = eager  # read by the attention function: compiled or eager flex
    return mask


# ----------------------------------------------------------------------------------------------- attention

_COMPILED_FLEX = None


def _flex(eager: bool):
    """flex_attention, compiled once per process (the uncompiled one materializes all scores: tests only)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if eager:
        return flex_attention
    if _COMPILED_FLEX is None:
        # dynamic=True: one compiled kernel for every packed length (rows vary from batch to batch)
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX


def _repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def _make_attention(original: str | None):
    """An attention function (transformers' AttentionInterface signature) that applies prefix-sharing masks and
    forwards everything else to the `original` implementation."""
    from transformers.masking_utils import BlockMask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if isinstance(attention_mask, BlockMask) and hasattr(attention_mask, "_prefix_sharing_eager"):
            out = _flex(attention_mask._prefix_sharing_eager)(query, key, value, block_mask=attention_mask,
                                                              scale=scaling, enable_gqa=True)
            return out.transpose(1, 2).contiguous(), None
        if (isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.bool
                and getattr(attention_mask, "_prefix_sharing", False)):
            groups = query.shape[1] // key.shape[1]
            out = F.scaled_dot_product_attention(query, _repeat_kv(key, groups), _repeat_kv(value, groups),
                                                 attn_mask=attention_mask, scale=scaling)
            return out.transpose(1, 2).contiguous(), None
        fallback = ALL_ATTENTION_FUNCTIONS.get(original) if original in ALL_ATTENTION_FUNCTIONS else None
        if fallback is None:  # "eager" is not in the registry: the model's own module-level function
            fallback = sys.modules[type(module).__module__].eager_attention_forward
        return fallback(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return attention


def attention_implementation(original: str | None) -> str:
    """Register (once) the prefix-sharing attention that wraps `original`; returns its registered name."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"prefix_sharing+{original}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_attention(original))
    return name


def _configs(model: torch.nn.Module) -> list:
    seen = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen[id(cfg)] = cfg
    return list(seen.values())


@contextmanager
def prefix_sharing_attention(model: torch.nn.Module):
    """Inside the block the model's attention layers understand prefix-sharing masks (and behave as before for any
    other mask). Keep it open across the backward pass: checkpointed layers run their forward again there."""
    configs = _configs(model)
    originals = [c._attn_implementation for c in configs]
    if any(o and o.startswith("prefix_sharing+") for o in originals):  # already inside one
        yield
        return
    for c, o in zip(configs, originals, strict=True):
        c._attn_implementation = attention_implementation(o)
    try:
        yield
    finally:
        for c, o in zip(configs, originals, strict=True):
            c._attn_implementation = o


def row_tokens_for(backend: str) -> int | None:
    """How many tokens one packed row may hold under `backend` (None: no limit, everything in one row)."""
    return DENSE_ROW_TOKENS if backend == "dense" else None


def packed_inputs(packed: PackedGroups, backend: str) -> dict:
    """Keyword arguments for a decoder (or a whole causal LM) call on the packed rows under `backend`."""
    mask = packed_mask(packed, backend)
    if isinstance(mask, torch.Tensor):
        mask._prefix_sharing = True
    return {"input_ids": packed.input_ids, "attention_mask": mask, "position_ids": packed.position_ids,
            "use_cache": False}


def run_packed_decoder(decoder: torch.nn.Module, packed: PackedGroups, backend: str) -> torch.Tensor:
    """Hidden states [R * W, H] of the packed rows, flattened as `packed.index` counts (call inside
    `prefix_sharing_attention(model)`)."""
    hidden = decoder(**packed_inputs(packed, backend)).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1])


__all__ = ["BACKENDS", "DENSE_ROW_TOKENS", "row_tokens_for", "PackedGroups", "attention_implementation", "block_mask", "common_prefix_len", "dense_mask",
           "pack_groups", "packed_inputs", "packed_mask", "prefix_sharing_attention", "resolve_backend", "run_packed_decoder"]
