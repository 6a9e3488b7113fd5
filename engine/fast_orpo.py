"""A faster ORPO training path: a drop-in subclass of TRL's `ORPOTrainer` (notebook 04, GPU profiles).

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
4. **Selective activation checkpointing, sized per batch.** `checkpoint_layers = k` keeps gradient checkpointing on
   the first k decoder layers only: the others keep their activations (memory) and skip the recompute (time). k is
   for the longest batch the training data can form; an un-checkpointed layer's activations grow with the batch's
   tokens, so a shorter batch checkpoints fewer layers (`adaptive_checkpointing`, one process), never holding more
   activations than the longest batch would with k (`checkpointed_layers`). Pair lengths have a long tail and the
   bound adds up the batch-size longest pairs, so most length-grouped batches are far shorter than it.
5. **Flash attention, not cuDNN.** On an H100 PyTorch's SDPA prefers cuDNN attention, which builds a new plan for
   every new sequence length: ~3 ms of CPU per call, and with length-varying batches the GPU sat idle 40% of a step
   (profiled in benchmarks/orpo_speed.py). Forward, backward and checkpoint recompute run with flash / mem-efficient
   SDPA instead (`sdpa_backends`).
6. **LoRA layers as one autograd node each** (`fuse_lora`; engine.kernels.LoRALinear): base(x) + scaling * B(A(x))
   with the add inside the big matmul, instead of PEFT's clone, scale and add over [tokens, out_features] tensors and
   four autograd nodes; and the MLP's down projection recomputes silu(gate) * up in its backward instead of keeping
   it (engine.kernels.SiluMulLoRALinear: ~20% less memory per un-checkpointed layer, so fewer checkpointed layers).
7. **Prefix sharing, no padding (`share_prompt = True`; on in the h100 profile: 1.30x on an H100).** Each pair
   becomes ONE segment [prompt, chosen, rejected] of a single packed row (engine.prefix_sharing): the prompt is
   computed once instead of once per answer, and no pad token is computed at all. The rejected tokens attend to the
   prompt and to themselves only (never to the chosen answer), with position ids that continue from the prompt's end,
   and no pair sees another: FlashAttention's varlen kernel on the GPU (or a FlexAttention BlockMask), a dense mask
   elsewhere. Every hidden state the loss reads is the one the unshared forward computes, so the loss is unchanged
   (tests/test_prefix_sharing.py).
8. **No waiting for the GPU between steps.** Prefix sharing packs each batch from a CPU copy the collator keeps
   (`HostCopy`), so the CPU prepares the next batch while the GPU still runs this one (reading the GPU copy back
   would wait for it). Notebook 04 adds the rest: fused AdamW (h100), no per-step NaN check of the loss, and
   non-blocking batch copies.
9. **Autocast in the compute dtype, in training and evaluation steps.** TRL wraps the loss in
   `torch.autocast(device)`, whose CUDA default is *fp16*, even when training in bf16; we autocast to bf16 when
   `bf16=True` (no fp16 overflow risk, no bf16->fp16 casts of every dequantized weight), and to fp16 when
   `fp16=True` (stock TRL gets that from accelerate's wrapper around model.forward, which our path bypasses).

Knobs are class attributes, so the constructor stays exactly TRL's (set them on the class or the instance).
"""

from __future__ import annotations

import random
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch.utils.data import Sampler, SequentialSampler
from trl.experimental.orpo import ORPOTrainer

from .kernels import ATTENTION_BACKENDS, attention_backends, fused_lora
from .prefix_sharing import (pack_groups, packed_inputs, prefix_sharing_attention, resolve_backend, row_tokens_for,
                             run_packed_decoder)
from .scoring import autocast_weight, decoder_and_head, is_right_padded, run_decoder, token_logps

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


# ------------------------------------------------------------------------------------------- checkpointing per batch


def checkpointed_layers(tokens: int, reference_tokens: int, n_layers: int, k: int) -> int:
    """How many of the first decoder layers to checkpoint for a batch of `tokens` tokens, given `k` at the longest
    batch (`reference_tokens`).

    An un-checkpointed layer keeps activations in proportion to the batch's tokens (~14 [tokens, hidden] tensors in
    bf16 for Mistral: 2.2 GiB at 20k tokens); a checkpointed one keeps only its input. So the longest batch with k
    checkpointed layers holds ~(n_layers - k) x reference_tokens layer-tokens, and a batch of `tokens` may leave
    floor((n_layers - k) x reference_tokens / tokens) layers un-checkpointed within at most the same memory: fewer
    recomputed layers for every shorter batch, more if a batch is longer than `reference_tokens` (possible only when
    the reference was set by hand below the data's bound, or a packing pads past it).
    """
    if k <= 0 or tokens <= 0:
        return max(k, 0)
    free = min(n_layers, (n_layers - min(k, n_layers)) * reference_tokens // tokens)
    return n_layers - free


def longest_batch_tokens(dataset, batch_size: int, share_prompt: bool, pack_multiple: int = 1) -> int:
    """An upper bound of the tokens the decoder runs for one training batch of `batch_size` tokenized pairs
    (TRL's columns prompt_/chosen_/rejected_input_ids). Shared prompts: the `batch_size` largest pairs of
    chosen + rejected - prompt + 1 tokens (the prompt once; TRL may tokenize the prompt's last token differently in
    the two sequences), rounded up to `pack_multiple`; unshared: 2 x batch_size rows padded to the longest sequence."""
    chosen = [len(x) for x in dataset["chosen_input_ids"]]
    rejected = [len(x) for x in dataset["rejected_input_ids"]]
    if not share_prompt:
        return 2 * batch_size * max(max(chosen), max(rejected))
    prompt = [len(x) for x in dataset["prompt_input_ids"]]
    per_pair = sorted((c + r - p + 1 for c, r, p in zip(chosen, rejected, prompt, strict=True)), reverse=True)
    total = sum(per_pair[:batch_size])
    return -(-total // pack_multiple) * pack_multiple


# ----------------------------------------------------------------------------------------------- host copy

HOST_COPY = "host_copy"  # batch key of the CPU copy that prefix sharing packs from


class HostCopy:
    """A batch's chosen/rejected tensors as the collator made them, on the CPU. The Trainer (and accelerate's data
    loader) move tensors, dicts, lists and tuples to the GPU; this plain object rides along unmoved."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors


class CollatorWithHostCopy:
    """The trainer's data collator, plus a `HostCopy` of the batch while the trainer shares prompts. Prefix sharing
    packs each batch on the CPU; reading the GPU copy back (`.cpu()`) would wait for the GPU to finish the previous
    step, and the GPU would then idle while the CPU packs. With the host copy the CPU packs the next batch while the
    GPU still runs this one."""

    def __init__(self, collate, trainer):
        self.collate, self.trainer = collate, trainer

    def __call__(self, features):
        batch = self.collate(features)
        if getattr(self.trainer, "share_prompt", False) and isinstance(batch, dict):
            batch[HOST_COPY] = HostCopy({k: v for k, v in batch.items() if torch.is_tensor(v)
                                         and k.startswith(("chosen_", "rejected_")) and v.device.type == "cpu"})
        return batch


# ----------------------------------------------------------------------------------------------- trainer


class FastORPOTrainer(ORPOTrainer):
    """`ORPOTrainer` with a chunked, padding-free loss path (see the module docstring). Same constructor as TRL's.

    Class attributes (override on the class or an instance before `train()`):
        logits_chunk: rows of lm_head output computed at once (memory ~ logits_chunk x V x 4 bytes, x ~3 transient).
        drop_padding_mask: skip the attention mask when the batch is right-padded (exact; enables fused causal SDPA).
        checkpoint_layers: None = gradient checkpointing as configured; k = checkpoint only the first k decoder layers
            (needs `gradient_checkpointing=True`; more layers = less memory, more recompute), at the longest batch.
        adaptive_checkpointing: with checkpoint_layers, a batch of T tokens checkpoints only the first
            `checkpointed_layers(T, ...)` layers: as few as keep its activations within those of the longest batch
            with k. Same math (checkpointing only trades memory for recompute). One process only (DDP ranks keep k).
        checkpoint_reference_tokens: the longest batch's tokens; None = bounded from the training data at the first
            step (`longest_batch_tokens`).
        mega_batch_mult: mega-batch size, in training batches, for `train_sampling_strategy="group_by_length"`.
        sdpa_backends: SDPA backends allowed in training and evaluation steps (names of torch's SDPBackend);
            None = PyTorch's own choice.
        fuse_lora: run LoRA layers as one autograd node each (engine.kernels.fused_lora; off = PEFT's forward).
        share_prompt: pack each pair as one [prompt, chosen, rejected] segment of a padding-free row, the prompt
            computed once (engine.prefix_sharing). Same loss; the logged mean logits average real tokens only.
        share_prompt_backend: "auto" (the varlen kernel on CUDA, else FlexAttention; a dense mask elsewhere),
            or one of engine.prefix_sharing.BACKENDS.
        pack_multiple: the packed row is padded to a multiple of this many tokens (FlexAttention's block: 128).
    """

    logits_chunk: int = 2048  # 4,096 peaked 1 GiB higher on an H100 (h100 profile), and was no faster
    drop_padding_mask: bool = True
    checkpoint_layers: int | None = None
    adaptive_checkpointing: bool = True
    checkpoint_reference_tokens: int | None = None
    mega_batch_mult: int = 50
    sdpa_backends: tuple[str, ...] | None = ATTENTION_BACKENDS
    fuse_lora: bool = True
    share_prompt: bool = False
    share_prompt_backend: str = "auto"
    pack_multiple: int = 128

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._checkpointing_applied = False
        self._checkpointable: list[bool] | None = None  # per decoder layer, once checkpoint_layers is applied
        self.data_collator = CollatorWithHostCopy(self.data_collator, self)

    # -- batches of similar length --------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if getattr(self.args, "train_sampling_strategy", None) != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        lengths = [max(a, b) for a, b in zip(
            map(len, dataset["chosen_input_ids"]), map(len, dataset["rejected_input_ids"]), strict=True)]
        # Group by the micro-batches of ALL processes at once: accelerate hands consecutive micro-batches to ranks
        # 0..N-1, so with N processes one group of N x per-device pairs has similar lengths on every rank (no rank
        # waits for a longer one) and a 1-process run with N x the micro-batch sees the same pairs per step.
        batch = self.args.per_device_train_batch_size * self.args.world_size
        return LengthGroupedPairSampler(lengths, batch, self.mega_batch_mult, seed=self.args.seed)

    def _get_eval_sampler(self, eval_dataset):
        # With train_sampling_strategy="group_by_length", transformers groups *evaluation* batches too, with a
        # LengthGroupedSampler that reads `input_ids` from each row; preference rows hold chosen_/rejected_input_ids,
        # so the first evaluation crashed ("Can only automatically infer lengths ...", PITFALLS 30). Evaluation
        # needs one fixed order, not grouping: the same sequential order transformers uses without grouping.
        if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    # -- selective checkpointing ------------------------------------------------------------------------------
    def _apply_checkpoint_layers(self, model) -> None:
        self._checkpointing_applied = True
        if self.checkpoint_layers is None:
            return
        layers = decoder_and_head(model)[0].layers
        # the layers gradient checkpointing covers (all of them, normally): only these may be checkpointed
        self._checkpointable = [bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers]
        self._set_checkpointed(model, self.checkpoint_layers)
        if self.adaptive_checkpointing and self.checkpoint_reference_tokens is None and self.train_dataset is not None:
            self.checkpoint_reference_tokens = longest_batch_tokens(
                self.train_dataset, self.args.per_device_train_batch_size, self.share_prompt, self.pack_multiple)

    def _set_checkpointed(self, model, k: int) -> None:
        """Gradient checkpointing on the first k decoder layers (of those it covers), off on the others."""
        for i, layer in enumerate(decoder_and_head(model)[0].layers):
            if hasattr(layer, "gradient_checkpointing"):
                layer.gradient_checkpointing = self._checkpointable[i] and i < k
        self.last_checkpointed_layers = k  # benchmarks read it

    def _size_checkpointing(self, model, tokens: int) -> None:
        """Before a training forward of `tokens` tokens: checkpoint as few layers as keep its activations within the
        longest batch's with `checkpoint_layers` (see `checkpointed_layers`)."""
        if (self.checkpoint_layers is None or not self.adaptive_checkpointing or not self.checkpoint_reference_tokens
                or self._checkpointable is None  # compute_loss applies checkpoint_layers first
                or self.args.world_size > 1 or not (model.training and torch.is_grad_enabled())):
            return  # several processes: every rank keeps the same k (they see batches of different lengths)
        k = checkpointed_layers(tokens, self.checkpoint_reference_tokens, len(self._checkpointable),
                                self.checkpoint_layers)
        if k != getattr(self, "last_checkpointed_layers", None):
            self._set_checkpointed(model, k)

    # -- kernels: forward, backward and checkpoint recompute all happen inside training_step ---------------------
    @contextmanager
    def kernels(self):
        """The attention backends and fused LoRA this trainer's steps run with."""
        sdpa = attention_backends(self.sdpa_backends) if self.sdpa_backends else nullcontext()
        # prefix sharing swaps the attention function for the whole step: checkpointed layers recompute their
        # forward inside the backward pass, and must see the packed mask the same way then
        sharing = prefix_sharing_attention(self.model) if self.share_prompt else nullcontext()
        with sdpa, fused_lora(self.model, self.fuse_lora and not self.is_fsdp_enabled), sharing:  # FSDP owns LoRA
            yield

    def training_step(self, *args, **kwargs):
        with self.kernels():
            return super().training_step(*args, **kwargs)

    def prediction_step(self, *args, **kwargs):
        # TRL's prediction_step calls get_batch_loss_metrics itself, not compute_loss: the evaluation needs the same
        # autocast. Without it an fp16 run (t4) evaluated in fp32 (fp32 norms after PEFT's k-bit preparation):
        # 27.2 s instead of 3.0 s per evaluation of 64 pairs on an H100 (README, GPU series).
        with self.kernels(), self._compute_precision():
            return super().prediction_step(*args, **kwargs)

    # -- autocast in the real compute dtype -------------------------------------------------------------------
    def _autocast(self):
        # We call the decoder directly, bypassing the autocast wrapper accelerate puts on model.forward: open it here.
        if self.args.bf16 or self.args.fp16:
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16 if self.args.bf16 else torch.float16)
        return nullcontext()

    @contextmanager
    def _compute_precision(self):
        """`_autocast()` for a training or evaluation step, with TRL's own autocast (CUDA's default, fp16, which it
        opens when it cast the PEFT model to bf16) switched off inside: one autocast, in the compute dtype."""
        was, self._peft_has_been_casted_to_bf16 = self._peft_has_been_casted_to_bf16, False
        try:
            with self._autocast():
                yield
        finally:
            self._peft_has_been_casted_to_bf16 = was

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._checkpointing_applied:
            self._apply_checkpoint_layers(model)
        with self._compute_precision():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    # -- the loss path ---------------------------------------------------------------------------------------------
    def _decoder_states(self, model, decoder, ids, mask) -> torch.Tensor:
        """Last hidden states [B, L, H]: from the decoder directly, or, under DDP, through the DDP wrapper.

        DDP synchronizes gradients only for a forward that goes through its wrapper (it arms its gradient hooks
        there): calling the inner decoder would train each process on its own shard, silently. So under DDP the
        whole model runs with `logits_to_keep=1` (lm_head on one position only, nothing of size [B, L, V]) and a
        forward hook catches the decoder's output.
        """
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return run_decoder(decoder, ids, mask, self.drop_padding_mask)
        captured = {}
        handle = decoder.register_forward_hook(lambda module, args, output: captured.update(h=output.last_hidden_state))
        try:
            keep_mask = not (self.drop_padding_mask and is_right_padded(mask))
            model(input_ids=ids, attention_mask=mask if keep_mask else None, use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        return captured["h"]

    def _packed_states(self, model, decoder, packed, backend: str) -> torch.Tensor:
        """`_decoder_states` for prefix sharing: hidden states [rows * width, H] of the packed rows (under DDP
        through the wrapper, for the same reason)."""
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return run_packed_decoder(decoder, packed, backend)
        captured = {}
        handle = decoder.register_forward_hook(lambda module, args, output: captured.update(h=output.last_hidden_state))
        try:
            model(**packed_inputs(packed, backend), logits_to_keep=1)
        finally:
            handle.remove()
        return captured["h"].reshape(-1, captured["h"].shape[-1])

    def concatenated_forward(self, model, batch: dict[str, Any]):
        """Same outputs as TRL's: (chosen_logps, rejected_logps, chosen_logits, rejected_logits, chosen_nll_loss).

        chosen/rejected_logps: mean log-prob of the answer tokens (labels != -100), per row.
        chosen_nll_loss: mean cross-entropy over every real token of the chosen rows, prompt included (as TRL does).
        The two `logits` outputs are only logged (TRL logs their mean); we return that mean directly, computed
        exactly from the hidden states: mean_v(h . w_v) = h . mean_v(w_v), so no logits are needed for it either.
        Like TRL's, that mean includes pad positions, whose values depend on the mask: with the mask dropped this
        one logged number differs from TRL's; nothing the loss reads does.
        """
        if self.is_encoder_decoder or self.aux_loss_enabled or self.is_fsdp_enabled:
            # FSDP: outside its own forward, FSDP keeps the lm_head weight sharded, so the chunked head below cannot
            # read it: TRL's path (full logits, inside the wrapped forward) is the correct one there
            return super().concatenated_forward(model, batch)
        if self.share_prompt and self._can_share(model, batch):
            with prefix_sharing_attention(model):  # a no-op inside training_step, which already opened it
                return self.shared_prompt_forward(model, batch)
        cb = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=self.padding_value,
                                      device=self.accelerator.device)
        ids, mask, labels = cb["concatenated_input_ids"], cb["concatenated_attention_mask"], cb["concatenated_labels"]
        n_chosen = batch["chosen_labels"].shape[0]
        self._size_checkpointing(model, ids.numel())  # padded rows: every position is computed
        decoder, head = decoder_and_head(model)
        hidden = self._decoder_states(model, decoder, ids, mask)[:, :-1]  # position t predicts token t+1
        weight = autocast_weight(head.weight)

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

    @staticmethod
    def _can_share(model, batch) -> bool:
        """Prefix sharing needs right-padded rows, and sequences no longer than the model's sliding window (Mistral:
        4,096; the packed attention confines a token to its own pair, which equals the windowed attention only while
        a sequence fits the window). Otherwise the unshared path runs (same loss)."""
        if not (is_right_padded(batch["chosen_attention_mask"]) and is_right_padded(batch["rejected_attention_mask"])):
            return False
        window = getattr(decoder_and_head(model)[0].config, "sliding_window", None)
        longest = max(batch["chosen_attention_mask"].shape[1], batch["rejected_attention_mask"].shape[1])
        return window is None or longest <= window

    def shared_prompt_forward(self, model, batch: dict[str, Any]):
        """`concatenated_forward` with each pair packed as one [prompt, chosen, rejected] segment (`share_prompt`).

        Selects exactly the tokens TRL's loss reads, by their position t in the pair's own (unpadded) sequence, and
        predicts token t from the hidden state of position t - 1 of the same sequence, wherever that sits in the
        packed row (`PackedGroups.index`): the NLL over every real chosen token after the first (TRL: labels =
        input_ids where attention_mask == 1, shifted by one), and the mean log-prob over the answer tokens
        (labels != -100) of both sequences. Needs right-padded rows (checked by the caller).
        To backpropagate outside `training_step`, open `self.kernels()` around forward AND backward: checkpointed
        layers rerun their forward during the backward pass and need the prefix-sharing attention there too.
        """
        device = self.accelerator.device
        host = batch[HOST_COPY].tensors if HOST_COPY in batch else batch  # without it, .cpu() waits for the GPU
        c_ids, c_mask, c_lab = (host[f"chosen_{k}"].cpu() for k in ("input_ids", "attention_mask", "labels"))
        r_ids, r_mask, r_lab = (host[f"rejected_{k}"].cpu() for k in ("input_ids", "attention_mask", "labels"))
        n = c_ids.shape[0]
        c_len, r_len = c_mask.sum(1).tolist(), r_mask.sum(1).tolist()
        groups = [[c_ids[i, :c_len[i]].tolist(), r_ids[i, :r_len[i]].tolist()] for i in range(n)]
        backend = resolve_backend(self.share_prompt_backend, self.accelerator.device)
        packed = pack_groups(groups, pad_id=self.padding_value, pack_multiple=self.pack_multiple,
                             row_tokens=row_tokens_for(backend))
        self.last_packed_tokens = packed.input_ids.numel()  # tokens the decoder runs (benchmarks read it)

        hidden_idx, targets, rows, in_nll, in_logp = [], [], [], [], []
        for i in range(n):
            for k, (length, ids, lab) in enumerate(((c_len[i], c_ids[i], c_lab[i]), (r_len[i], r_ids[i], r_lab[i]))):
                t = torch.arange(1, length)  # token t, predicted at position t - 1
                answer = lab[1:length] != -100
                keep = torch.ones_like(answer) if k == 0 else answer  # chosen: every real token (NLL)
                hidden_idx.append(packed.index[2 * i + k][t - 1][keep])
                targets.append(ids[1:length][keep])
                rows.append(torch.full((int(keep.sum()),), i + k * n))
                in_nll.append(torch.full((int(keep.sum()),), k == 0))
                in_logp.append(answer[keep])
        cat = lambda xs: torch.cat(xs).to(device, non_blocking=True)  # noqa: E731
        hidden_idx, targets, rows, in_nll, in_logp = map(cat, (hidden_idx, targets, rows, in_nll, in_logp))

        decoder, head = decoder_and_head(model)
        self._size_checkpointing(model, packed.input_ids.numel())
        packed = packed.to(device, backend)  # the varlen plan is built on the CPU, before the copy
        hidden = self._packed_states(model, decoder, packed, backend)  # [rows * width, H]
        tok = token_logps(hidden[hidden_idx], autocast_weight(head.weight), targets, self.logits_chunk)

        chosen_nll_loss = -(tok * in_nll).sum() / in_nll.sum()
        sums = torch.zeros(2 * n, device=tok.device, dtype=tok.dtype).index_add(0, rows, tok * in_logp)
        counts = torch.zeros(2 * n, device=tok.device, dtype=tok.dtype).index_add(0, rows, in_logp.to(tok.dtype))
        all_logps = sums / counts

        with torch.no_grad():  # logged only: mean logit over the real tokens of each sequence (no pads here)
            pos_mean = hidden.float() @ head.weight.float().mean(0)
            if getattr(head, "bias", None) is not None:
                pos_mean = pos_mean + head.bias.float().mean()
            chosen_mean = torch.cat([pos_mean[packed.index[2 * i]] for i in range(n)]).mean()
            rejected_mean = torch.cat([pos_mean[packed.index[2 * i + 1]] for i in range(n)]).mean()
        return all_logps[:n], all_logps[n:], chosen_mean, rejected_mean, chosen_nll_loss


__all__ = ["CollatorWithHostCopy", "FastORPOTrainer", "HostCopy", "LengthGroupedPairSampler", "checkpointed_layers",
           "longest_batch_tokens", "pair_length"]
