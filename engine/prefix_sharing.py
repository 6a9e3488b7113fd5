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

Three ways to apply the mask, chosen by `backend`:
  * "varlen": FlashAttention's variable-length kernel (`torch.nn.attention.varlen.varlen_attn`, GPU). The rule
    above is ONE varlen call: the queries are the packed row as it is, cut into segments [prefix | tail 1] (plain
    causal) and [tail k] for k >= 2, whose keys are [prefix | tail k] gathered from the row (`VarlenPlan`): with
    causal attention aligned to the bottom right (FlashAttention's rule when a segment has more keys than queries),
    tail token i sees the whole prefix and tail tokens 0..i. No mask is materialized and no block is wasted;
    "varlen_reference" computes the same plan segment by segment with SDPA (CPU: the tests check the plan with it).
  * "flex": PyTorch FlexAttention with a BlockMask built from per-token group and segment ids. Blocks that no query
    may see are skipped, so attention costs only what the groups need (GPU; compiled once with torch.compile;
    about half of flash attention's speed per token in fwd + bwd, so "auto" prefers "varlen" where it exists).
  * "dense": a [1, 1, T, T] boolean mask given to scaled_dot_product_attention. Exact everywhere, O(T^2) memory:
    the CPU path and the reference the tests compare flex against. ("flex_eager" runs flex uncompiled: forward only
    on CPU, used by tests to check the BlockMask itself.)
The decoder is called with that mask and the packed position ids; transformers uses a 4D mask / BlockMask as given.
A registered attention function (`attention_implementation`) applies it and hands every other call (an ordinary
2D mask, generation, ...) to the model's own attention implementation unchanged.
"""

from __future__ import annotations

import inspect
import itertools
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "varlen", "varlen_reference", "flex", "flex_eager", "dense")

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
    varlen: VarlenPlan | None = None  # the "varlen" backend's plan, when `to(device, backend)` built it

    def to(self, device, backend: str | None = None) -> PackedGroups:
        """The rows on `device`. For the varlen backends the plan is built here from the CPU tensors first: built
        from GPU tensors it would wait for the GPU (`.tolist()`), so the CPU could not prepare the next batch
        while the GPU runs this one. On CUDA the copies come from pinned memory, so they too do not wait."""
        device = torch.device(device)
        plan = self.varlen
        if plan is None and backend in ("varlen", "varlen_reference") and self.input_ids.device.type == "cpu":
            plan = varlen_plan(self)
        mv = lambda t: copy_without_waiting(t, device)  # noqa: E731
        return PackedGroups(mv(self.input_ids), mv(self.position_ids), mv(self.group), mv(self.segment),
                            [mv(i) for i in self.index], self.prefix_lens, self.n_real,
                            plan.to(device) if plan is not None else None)


def copy_without_waiting(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; a CPU -> CUDA copy goes through pinned memory, so the CPU does not wait for it."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


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


@dataclass
class VarlenPlan:
    """One varlen attention call over a packed row: query segments tile the row in order (`cu_q`), each with its
    keys gathered from the row (`kv_index`, cut by `cu_k`); causal, aligned to the bottom right."""

    kv_index: torch.Tensor  # [Tk] row positions, segment after segment
    cu_q: torch.Tensor  # int32 [S + 1]
    cu_k: torch.Tensor  # int32 [S + 1]
    max_q: int
    max_k: int

    def to(self, device) -> VarlenPlan:
        if self.cu_q.device == torch.device(device):
            return self
        return VarlenPlan(*(t.to(device, non_blocking=True) for t in (self.kv_index, self.cu_q, self.cu_k)),
                          self.max_q, self.max_k)


def varlen_plan(packed: PackedGroups) -> VarlenPlan:
    """The segments of the module docstring's "varlen" backend for a one-row `packed`.

    Per group: [prefix | first non-empty tail] is one causal segment (its keys are its own tokens); every later
    tail is a segment of its own whose keys are the prefix followed by the tail. End pads form their own segment
    (seen by no real token, as in the dense mask)."""
    if packed.input_ids.shape[0] != 1:
        raise ValueError("the varlen backend packs everything into one row (row_tokens=None)")
    group, segment = packed.group[0].tolist(), packed.segment[0].tolist()
    runs, start = [], 0  # (group, segment, (start, length)) of each run of equal (group, segment), in row order
    for i in range(1, len(group) + 1):
        if i == len(group) or group[i] != group[start] or segment[i] != segment[start]:
            runs.append((group[start], segment[start], (start, i - start)))
            start = i
    q_lens, k_ranges = [], []  # per segment: its query count, and the row ranges its keys are gathered from
    for g, members in itertools.groupby(runs, key=lambda run: run[0]):
        members = list(members)
        if g < 0:  # end pads: their own causal run
            q_lens += [n for _, _, (_, n) in members]
            k_ranges += [[r] for _, _, r in members]
            continue
        prefix = [r for _, seg, r in members if seg == 0]  # [] when the sequences share no first token
        tails = [r for _, seg, r in members if seg > 0]  # empty tails have no run
        first = (prefix[0][0], prefix[0][1] + (tails[0][1] if tails else 0)) if prefix else tails[0]
        q_lens.append(first[1])  # [prefix | first tail]: contiguous in the row, plain causal
        k_ranges.append([first])
        for tail in tails[1:]:  # the later tails see the prefix, then themselves (bottom-right causal)
            q_lens.append(tail[1])
            k_ranges.append(prefix + [tail])
    device = packed.input_ids.device
    k_lens = [sum(n for _, n in ranges) for ranges in k_ranges]
    kv_index = torch.cat([torch.arange(a, a + n) for ranges in k_ranges for a, n in ranges])
    cum = lambda xs: torch.tensor([0] + xs, dtype=torch.int32).cumsum(0, dtype=torch.int32)  # noqa: E731
    if sum(q_lens) != len(group):  # the segments must tile the row: every token is a query exactly once
        raise AssertionError(f"varlen plan covers {sum(q_lens)} of {len(group)} tokens")
    return VarlenPlan(kv_index.to(device), cum(q_lens).to(device), cum(k_lens).to(device), max(q_lens), max(k_lens))


def varlen_available() -> bool:
    """FlashAttention's varlen kernel through PyTorch (torch >= 2.9 on a CUDA GPU of compute capability >= 8:
    FlashAttention-2 has no kernels for a T4 or a V100, which get FlexAttention)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    from . import device_capability

    capability = device_capability()
    return capability is not None and capability[0] >= 8


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto": FlashAttention's varlen kernel on a GPU that has it, else the dense mask with PyTorch's SDPA (a CPU,
    or a T4/V100: no Triton kernel is picked there by default, see engine.kernel_plan); "flex" only when asked."""
    if backend not in BACKENDS:
        raise ValueError(f"prefix-sharing attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "varlen" if device.type == "cuda" and varlen_available() else "dense"
    return backend


def packed_mask(packed: PackedGroups, backend: str):
    """The mask object the decoder gets for `packed` under `backend`. The varlen plan travels on a 4D boolean
    tensor (an expanded scalar: no memory) because transformers hands 4D masks to the attention function as is."""
    if backend in ("varlen", "varlen_reference"):
        n = packed.input_ids.shape[1]
        carrier = torch.ones((), dtype=torch.bool, device=packed.input_ids.device).expand(1, 1, n, n)
        plan = packed.varlen if packed.varlen is not None else varlen_plan(packed)
        carrier._prefix_sharing_varlen = (plan, backend == "varlen_reference")
        return carrier
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


def varlen_reference(q, k, v, plan: VarlenPlan, scale: float | None) -> torch.Tensor:
    """What the varlen kernel computes for `plan` ([T, Hq, D] queries, [Tk, Hkv, D] gathered keys and values),
    one SDPA call per segment with an explicit bottom-right causal mask (CPU tests)."""
    cu_q, cu_k = plan.cu_q.tolist(), plan.cu_k.tolist()
    groups = q.shape[1] // k.shape[1]
    out = []
    for qa, qb, ka, kb in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:], strict=True):
        lq, lk = qb - qa, kb - ka
        allowed = torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + (lk - lq)
        kh, vh = (x[ka:kb].transpose(0, 1).repeat_interleave(groups, dim=0) for x in (k, v))  # [Hq, lk, D]
        seg = F.scaled_dot_product_attention(q[qa:qb].transpose(0, 1), kh, vh, attn_mask=allowed, scale=scale)
        out.append(seg.transpose(0, 1))
    return torch.cat(out)


_VARLEN_PARAMETERS = None


def _varlen_kernel(q, k, v, plan: VarlenPlan, scale: float | None) -> torch.Tensor:
    """torch.nn.attention.varlen.varlen_attn, causal, with grouped-query heads; keyword names differ across torch
    versions (is_causal in 2.9-2.10, window_size later), so they are read from its signature."""
    global _VARLEN_PARAMETERS
    from torch.nn.attention.varlen import varlen_attn

    if _VARLEN_PARAMETERS is None:
        _VARLEN_PARAMETERS = set(inspect.signature(varlen_attn).parameters)
    kw = {"window_size": (-1, 0)} if "window_size" in _VARLEN_PARAMETERS else {"is_causal": True}
    if scale is not None and "scale" in _VARLEN_PARAMETERS:
        kw["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-6:
        raise RuntimeError("this torch's varlen_attn has no `scale`: use share_prompt_backend='flex'")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMETERS:
            kw["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return varlen_attn(q, k, v, plan.cu_q, plan.cu_k, plan.max_q, plan.max_k, **kw)


def varlen_attention(query, key, value, plan: VarlenPlan, scale: float | None, reference: bool = False):
    """Attention of one packed row under `plan`: query [1, Hq, T, D], key / value [1, Hkv, T, D] (as transformers
    hands them over) -> [1, T, Hq, D]. The keys and values of each segment are gathered from the row; float32
    inputs (and `reference`) take the exact SDPA path, since the flash kernels run in half precision only."""
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).index_select(0, plan.kv_index)
    v = value[0].transpose(0, 1).index_select(0, plan.kv_index)
    exact = reference or q.dtype not in (torch.float16, torch.bfloat16)
    return (varlen_reference if exact else _varlen_kernel)(q, k, v, plan, scale).unsqueeze(0)


def _make_attention(original: str | None):
    """An attention function (transformers' AttentionInterface signature) that applies prefix-sharing masks and
    forwards everything else to the `original` implementation."""
    from transformers.masking_utils import BlockMask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        varlen = getattr(attention_mask, "_prefix_sharing_varlen", None) if isinstance(
            attention_mask, torch.Tensor) else None
        if varlen is not None:
            plan, reference = varlen
            return varlen_attention(query, key, value, plan, scaling, reference), None
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


__all__ = ["BACKENDS", "DENSE_ROW_TOKENS", "PackedGroups", "VarlenPlan", "attention_implementation", "block_mask",
           "common_prefix_len", "copy_without_waiting", "dense_mask", "pack_groups", "packed_inputs", "packed_mask",
           "prefix_sharing_attention", "resolve_backend", "row_tokens_for", "run_packed_decoder", "varlen_attention",
           "varlen_available", "varlen_plan", "varlen_reference"]
