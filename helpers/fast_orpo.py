"""A faster ORPO loss path: a drop-in subclass of TRL's `ORPOTrainer`, plus a batched held-out scorer.

Same math as `trl.experimental.orpo.ORPOTrainer` (tests/test_fast_orpo.py checks the loss and both of its parts
against TRL on a fixed batch); what changes is *how* it is computed:

1. **Logits only where the loss looks, in chunks.** TRL runs the whole model and gets logits of shape
   [2B, L, V] (V = 32,000 for Mistral): with B = 8 pairs and L = 1,024 that is 0.5 G numbers, in bf16 plus fp32
   copies inside the softmax, and most of them belong to padding or to prompt tokens of the *rejected* rows, which
   no loss term reads. We run the decoder only (hidden states [2B, L, H]), pick the positions that matter
   (every real token of a chosen row: the NLL term; every answer token of both rows: the odds-ratio term), and apply
   the lm_head + log-softmax to those rows a chunk at a time, under activation checkpointing so that the backward
   pass recomputes a chunk's logits instead of keeping them. Nothing of size [2B, L, V] ever exists.
2. **No attention mask for right-padded batches.** With right padding and causal attention a real token never sees a
   pad (pads come *after* it), so the mask changes nothing for the tokens the loss reads. Without a mask PyTorch's
   SDPA can take its fused causal (flash) kernel instead of the slower masked one.
3. **Length-grouped batches.** With `train_sampling_strategy="group_by_length"` in the ORPOConfig, pairs of similar
   length share a micro-batch (sorted inside random mega-batches, batches shuffled, the longest first so an
   out-of-memory error shows at step 1). Less padding means fewer wasted FLOPs.
4. **Selective activation checkpointing.** `checkpoint_layers = k` keeps gradient checkpointing on the first k decoder
   layers only: the others keep their activations (memory) and skip the recompute (time).
5. **Autocast in the compute dtype.** TRL wraps the loss in `torch.autocast(device)`, whose CUDA default is *fp16*,
   even when training in bf16; we autocast to bf16 when `bf16=True` (no fp16 overflow risk, no bf16->fp16 casts of
   every dequantized weight).

Knobs are class attributes, so the constructor stays exactly TRL's (set them on the class or the instance).
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Sampler
from trl.experimental.orpo import ORPOTrainer

# ----------------------------------------------------------------------------------------------- log-probs


def _chunk_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each row of `hidden` ([n, H]) under the lm_head `weight` ([V, H]), in fp32."""
    logits = F.linear(hidden, weight).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per-token log-probs for `hidden` [n, H] -> [n], `chunk` rows of logits at a time.

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


def _autocast_weight(weight: torch.Tensor) -> torch.Tensor:
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
    """Last hidden states [B, L, H]; the mask is dropped when it cannot matter (right padding + causal attention)."""
    mask = None if (drop_mask and is_right_padded(attention_mask)) else attention_mask
    return decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state


# ----------------------------------------------------------------------------------------------- sampler


class LengthGroupedPairSampler(Sampler):
    """Indices such that each run of `batch_size` pairs has similar lengths, in a random batch order.

    Random permutation -> mega-batches of `mega_batch_mult * batch_size` -> sorted by length inside each -> cut into
    batches -> batches shuffled, with the batch holding the longest pair first (an OOM shows at step 1, not hours in).
    Unlike transformers' LengthGroupedSampler the batch order is shuffled, so lengths do not drift from long to short
    within every mega-batch (which would correlate sequence length with the learning-rate schedule).
    """

    def __init__(self, lengths: list[int], batch_size: int, mega_batch_mult: int = 50, seed: int = 0):
        self.lengths, self.batch_size, self.mega, self.seed, self.epoch = list(lengths), batch_size, mega_batch_mult, seed, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.batch_size * max(1, self.mega)
        batches = []
        for start in range(0, len(order), size):
            mega = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]  # last, so batch boundaries stay aligned
        if full:
            longest = max(range(len(full)), key=lambda b: max(self.lengths[i] for i in full[b]))
            first = full.pop(longest)
            rng.shuffle(full)
            full.insert(0, first)
        for batch in full + partial:
            yield from batch


def pair_length(row: dict) -> int:
    """Padded length of a tokenized pair = the longer of its two sequences (both are padded to it)."""
    return max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))


# ----------------------------------------------------------------------------------------------- trainer


class FastORPOTrainer(ORPOTrainer):
    """`ORPOTrainer` with a chunked, padding-free loss path (see the module docstring). Same constructor as TRL's.

    Class attributes (override on the class or an instance before `train()`):
        logits_chunk: rows of lm_head output computed at once (memory ~ logits_chunk x V x 4 bytes, x ~3 transient).
        drop_padding_mask: skip the attention mask when the batch is right-padded (exact; enables fused causal SDPA).
        checkpoint_layers: None = gradient checkpointing as configured; k = checkpoint only the first k decoder layers
            (needs `gradient_checkpointing=True`; more layers = less memory, more recompute).
        mega_batch_mult: mega-batch size, in training batches, for `train_sampling_strategy="group_by_length"`.
    """

    logits_chunk: int = 4096
    drop_padding_mask: bool = True
    checkpoint_layers: int | None = None
    mega_batch_mult: int = 50

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._checkpointing_applied = False

    # -- batches of similar length --------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if getattr(self.args, "train_sampling_strategy", None) != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        lengths = [max(a, b) for a, b in zip(
            map(len, dataset["chosen_input_ids"]), map(len, dataset["rejected_input_ids"]), strict=True)]
        batch = self.args.per_device_train_batch_size  # group micro-batches: each one is padded on its own
        return LengthGroupedPairSampler(lengths, batch, self.mega_batch_mult, seed=self.args.seed)

    # -- selective checkpointing ------------------------------------------------------------------------------
    def _apply_checkpoint_layers(self, model) -> None:
        self._checkpointing_applied = True
        if self.checkpoint_layers is None:
            return
        decoder, _ = decoder_and_head(model)
        for i, layer in enumerate(decoder.layers):
            if hasattr(layer, "gradient_checkpointing"):
                layer.gradient_checkpointing = bool(layer.gradient_checkpointing) and i < self.checkpoint_layers

    # -- autocast in the real compute dtype -------------------------------------------------------------------
    def _autocast(self):
        # We call the decoder directly, bypassing the autocast wrapper accelerate puts on model.forward: open it here.
        if self.args.bf16 or self.args.fp16:
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16 if self.args.bf16 else torch.float16)
        return nullcontext()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._checkpointing_applied:
            self._apply_checkpoint_layers(model)
        ctx = self._autocast()
        was, self._peft_has_been_casted_to_bf16 = self._peft_has_been_casted_to_bf16, False  # parent: no 2nd autocast
        try:
            with ctx:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._peft_has_been_casted_to_bf16 = was

    # -- the loss path ------------------------------------------------------------------------------------------
    def concatenated_forward(self, model, batch: dict[str, Any]):
        """Same outputs as TRL's: (chosen_logps, rejected_logps, chosen_logits, rejected_logits, chosen_nll_loss).

        chosen/rejected_logps: mean log-prob of the answer tokens (labels != -100), per row.
        chosen_nll_loss: mean cross-entropy over every real token of the chosen rows, prompt included (as TRL does).
        The two `logits` outputs are only logged (TRL logs their mean); we return that mean directly, computed
        exactly from the hidden states: mean_v(h . w_v) = h . mean_v(w_v), so no logits are needed for it either.
        Like TRL's, that mean includes pad positions, whose values depend on the mask: with the mask dropped this
        one logged number differs from TRL's; nothing the loss reads does.
        """
        if self.is_encoder_decoder or self.aux_loss_enabled:
            return super().concatenated_forward(model, batch)
        cb = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=self.padding_value,
                                      device=self.accelerator.device)
        ids, mask, labels = cb["concatenated_input_ids"], cb["concatenated_attention_mask"], cb["concatenated_labels"]
        n_chosen = batch["chosen_labels"].shape[0]
        decoder, head = decoder_and_head(model)
        hidden = run_decoder(decoder, ids, mask, self.drop_padding_mask)[:, :-1]  # position t predicts token t+1
        weight = _autocast_weight(head.weight)

        next_ids, next_labels = ids[:, 1:], labels[:, 1:]
        is_chosen = torch.zeros_like(next_ids, dtype=torch.bool)
        is_chosen[:n_chosen] = True
        nll_sel = is_chosen & (mask[:, 1:] == 1)  # TRL: labels = input_ids where attention_mask == 1
        logp_sel = next_labels != -100  # answer tokens of both rows
        rows, cols = torch.nonzero(nll_sel | logp_sel, as_tuple=True)
        targets = torch.where(logp_sel, next_labels, next_ids)[rows, cols]
        tok = token_logps(hidden[rows, cols], weight, targets, self.logits_chunk)

        in_nll, in_logp = nll_sel[rows, cols], logp_sel[rows, cols]
        chosen_nll_loss = -(tok * in_nll).sum() / in_nll.sum()
        n_rows = ids.shape[0]
        sums = torch.zeros(n_rows, device=tok.device, dtype=tok.dtype).index_add(0, rows, tok * in_logp)
        counts = torch.zeros(n_rows, device=tok.device, dtype=tok.dtype).index_add(0, rows, in_logp.to(tok.dtype))
        all_logps = sums / counts

        with torch.no_grad():  # logged only: mean over all [rows, L-1, V] logits, pads included, as TRL logs it
            pos_mean = hidden.float() @ head.weight.float().mean(0)
            if getattr(head, "bias", None) is not None:
                pos_mean = pos_mean + head.bias.float().mean()
        return all_logps[:n_chosen], all_logps[n_chosen:], pos_mean[:n_chosen].mean(), pos_mean[n_chosen:].mean(), chosen_nll_loss


# ----------------------------------------------------------------------------------------------- scorer


@torch.no_grad()
def score_pairs(model, rows, max_batch_tokens: int = 32768, logits_chunk: int = 8192, pad_token_id: int = 0,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Batched, no-grad mean answer log-probs for tokenized preference pairs (TRL's tokenized row format).

    `rows`: a sequence of dicts (or a datasets.Dataset) with chosen_input_ids, chosen_labels, rejected_input_ids,
    rejected_labels (labels -100 on the prompt), as `ORPOTrainer.tokenize_row` makes them. Every sequence is scored
    on its own: sorted by length, packed into batches of at most `max_batch_tokens` padded tokens, right-padded and
    run without an attention mask (exact, see `run_decoder`), log-probs taken only at answer positions.

    Returns per-pair tensors chosen_logps / rejected_logps (the quantities ORPO's odds ratio and the logged rewards
    use: rewards = beta x logps) and their ORPO log-odds.
    """
    device = device or next(p for p in model.parameters()).device
    decoder, head = decoder_and_head(model)
    seqs = []  # (length, pair index, is_chosen, ids, labels)
    for i, r in enumerate(rows):
        for side in ("chosen", "rejected"):
            seqs.append((len(r[f"{side}_input_ids"]), i, side == "chosen", r[f"{side}_input_ids"], r[f"{side}_labels"]))
    seqs.sort(key=lambda s: -s[0])
    n_pairs = len(seqs) // 2
    out = {True: torch.zeros(n_pairs, dtype=torch.float64), False: torch.zeros(n_pairs, dtype=torch.float64)}
    was_training = model.training
    model.eval()
    ctx = torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()
    try:
        start = 0
        while start < len(seqs):
            width = seqs[start][0]  # longest in this batch (sorted)
            n = max(1, min(len(seqs) - start, max_batch_tokens // width))
            group = seqs[start : start + n]
            start += n
            ids = torch.full((n, width), pad_token_id, dtype=torch.long)
            labels = torch.full((n, width), -100, dtype=torch.long)
            mask = torch.zeros((n, width), dtype=torch.long)
            for j, (length, _, _, seq_ids, seq_labels) in enumerate(group):
                ids[j, :length], labels[j, :length], mask[j, :length] = torch.tensor(seq_ids), torch.tensor(seq_labels), 1
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            with ctx:
                hidden = run_decoder(decoder, ids, mask)[:, :-1]
                sel = labels[:, 1:] != -100
                rows_, cols = torch.nonzero(sel, as_tuple=True)
                tok = token_logps(hidden[rows_, cols], _autocast_weight(head.weight), labels[:, 1:][rows_, cols],
                                  logits_chunk)
            sums = torch.zeros(n, device=tok.device, dtype=torch.float64).index_add(0, rows_, tok.double())
            means = (sums / sel.sum(1).clamp(min=1)).cpu()
            for j, (_, pair, is_chosen, _, _) in enumerate(group):
                out[is_chosen][pair] = means[j]
    finally:
        model.train(was_training)
    c, r = out[True], out[False]
    log_odds = (c - r) - (torch.log(-torch.expm1(c)) - torch.log(-torch.expm1(r)))
    return {"chosen_logps": c, "rejected_logps": r, "log_odds": log_odds}


def summarize_scores(scores: dict[str, torch.Tensor], beta: float) -> dict[str, float]:
    """Held-out metrics with the names ORPOTrainer.evaluate logs (rewards = beta x mean answer log-prob)."""
    c, r = scores["chosen_logps"], scores["rejected_logps"]
    return {
        "eval_rewards/chosen": float(beta * c.mean()),
        "eval_rewards/rejected": float(beta * r.mean()),
        "eval_rewards/accuracies": float((c > r).double().mean()),
        "eval_rewards/margins": float(beta * (c - r).mean()),
        "eval_logps/chosen": float(c.mean()),
        "eval_logps/rejected": float(r.mean()),
        "eval_log_odds_chosen": float(scores["log_odds"].mean()),
        "eval_log_odds_ratio": float(F.logsigmoid(scores["log_odds"]).mean()),
    }


__all__ = ["FastORPOTrainer", "LengthGroupedPairSampler", "score_pairs", "summarize_scores", "token_logps",
           "decoder_and_head", "run_decoder", "is_right_padded", "pair_length"]
