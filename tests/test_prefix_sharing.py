"""Prefix sharing (engine.prefix_sharing, FastORPOTrainer.share_prompt, mean_answer_logps(share_prompt=True)).

The packed [prompt, chosen, rejected] forward must give TRL's ORPO loss, both of its parts, every logged log-prob
metric and the LoRA gradients, on a tiny random Mistral (fp32, CPU). The batch includes the edge cases of sharing:
answers that begin with the same tokens (the shared prefix is longer than the prompt), a pair whose two answers are
identical (the rejected tail is empty), and one-token answers. The dense-mask path is what runs on CPU; the
FlexAttention BlockMask is checked on CPU with uncompiled flex (forward only: flex has no CPU backward).
"""

import os
import random

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from test_fast_orpo import VOCAB, _pairs, _rel, _tokenizer
from transformers import MistralConfig, MistralForCausalLM
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from engine.fast_orpo import FastORPOTrainer
from engine.prefix_sharing import (block_mask, common_prefix_len, dense_mask, pack_groups, prefix_sharing_attention,
                                    run_packed_decoder, varlen_plan, varlen_reference)
from engine.scoring import decoder_and_head
from helpers.scoring import mean_answer_logps

RTOL = 1e-3
METRICS = ["nll_loss", "log_odds_ratio", "log_odds_chosen", "logps/chosen", "logps/rejected", "rewards/chosen",
           "rewards/rejected", "rewards/margins", "rewards/accuracies"]


def _edge_pairs():
    rng = random.Random(5)
    words = lambda k: " ".join(f"w{rng.randrange(VOCAB - 3)}" for _ in range(k))  # noqa: E731
    same_start = words(4)
    return _pairs(6) + [
        {"prompt": words(5), "chosen": f" {same_start} {words(3)}", "rejected": f" {same_start} {words(6)}"},
        {"prompt": words(3), "chosen": " w7 w8", "rejected": " w7 w8"},  # identical answers: empty rejected tail
        {"prompt": words(9), "chosen": " w9", "rejected": " w10"},  # one-token answers (+ EOS)
    ]


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return MistralForCausalLM(cfg).float()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = _tokenizer()
    args = ORPOConfig(output_dir=str(tmp_path_factory.mktemp("orpo")), bf16=False, use_cpu=True, beta=0.1,
                      max_length=64, per_device_train_batch_size=4, gradient_checkpointing=False, report_to="none")
    data = Dataset.from_list(_edge_pairs())
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM",
                      init_lora_weights=False)  # random B: LoRA changes the outputs, so its grads are non-trivial
    trl = ORPOTrainer(model=_model(), args=args, train_dataset=data, processing_class=tok, peft_config=lora)
    model = trl.model  # the PeftModel; the fast trainer shares it
    fast = FastORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    fast.share_prompt = True
    batch = trl._prepare_inputs(trl.data_collator([trl.train_dataset[i] for i in range(len(data))]))
    return model, trl, fast, batch


# ----------------------------------------------------------------------------------------------- packing


def test_pack_groups_layout():
    groups = [[[1, 5, 6, 7, 2], [1, 5, 6, 9, 9, 2]], [[1, 3, 2], [1, 3, 2]]]
    p = pack_groups(groups, pad_id=0, pack_multiple=8)
    assert p.prefix_lens == [3, 3]
    # group 0: prefix [1 5 6] + chosen tail [7 2] + rejected tail [9 9 2]; group 1: prefix [1 3 2], empty tails
    assert p.input_ids[0].tolist() == [1, 5, 6, 7, 2, 9, 9, 2, 1, 3, 2, 0, 0, 0, 0, 0]
    assert p.position_ids[0, :11].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2]
    assert p.group[0].tolist() == [0] * 8 + [1] * 3 + [-1] * 5
    assert p.segment[0, :11].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 0, 0, 0]
    assert p.n_real == 11
    for k, seq in enumerate(s for g in groups for s in g):  # index maps each virtual position to its token
        assert p.input_ids[0, p.index[k]].tolist() == seq
        assert p.position_ids[0, p.index[k]].tolist() == list(range(len(seq)))
    assert common_prefix_len([[1, 2, 3], [1, 2]]) == 2 and common_prefix_len([[4], [5]]) == 0


def test_pack_groups_into_rows():
    """The dense path's row budget: a group never straddles two rows; index counts in flattened rows."""
    groups = [[[1, 5, 6, 7, 2], [1, 5, 6, 9, 9, 2]], [[1, 3, 2], [1, 3, 4]], [[1, 8], [1, 9]]]
    p = pack_groups(groups, pad_id=0, row_tokens=9)
    assert p.input_ids.shape == (2, 8)  # group 0 (8 tokens) alone; groups 1 + 2 (4 + 3 tokens) share row 2
    assert p.input_ids[1].tolist() == [1, 3, 2, 4, 1, 8, 9, 0]
    assert p.group[1].tolist() == [1, 1, 1, 1, 2, 2, 2, -1] and p.n_real == 15
    flat = p.input_ids.reshape(-1)
    for k, seq in enumerate(s for g in groups for s in g):
        assert flat[p.index[k]].tolist() == seq
    m = dense_mask(p)
    assert m.shape == (2, 1, 8, 8) and m[1, 0, 6].tolist() == [False] * 4 + [True, False, True, False]


def test_mask_rule_and_block_mask_agree():
    p = pack_groups([[[1, 5, 6, 7, 2], [1, 5, 6, 9, 9, 2]], [[1, 3], [4]]], pack_multiple=4)
    m = dense_mask(p)[0, 0]
    # the rejected tail (packed 5..7) sees the prompt and itself, never the chosen tail (3, 4) or another pair
    assert m[5, :8].tolist() == [True, True, True, False, False, True, False, False]
    assert m[7, :8].tolist() == [True, True, True, False, False, True, True, True]
    assert m[4, :8].tolist() == [True, True, True, True, True, False, False, False]
    assert not m[8:11, :8].any() and not m[:8, 8:].any()
    # no shared prefix (group 1: [1 3] vs [4]): the two sequences see nothing of each other
    assert m[10, 8:11].tolist() == [False, False, True]
    assert m.diagonal().all()  # every token, pads included, sees at least itself: no empty softmax
    # the BlockMask's mask_mod is the same rule
    bm = block_mask(p, block_size=128)
    n = p.group.shape[1]
    q, kv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(bm.mask_mod(0, 0, q, kv), m)


def test_varlen_plan_is_the_mask_rule():
    """The "varlen" backend's segments (one FlashAttention varlen call) give exactly the dense mask's attention:
    random q/k/v with grouped-query heads, groups of 2 and 3 sequences, a group with no common prefix, one whose
    sequences equal their prefix (empty tails), an empty first tail, and end pads."""
    groups = [[[1, 5, 6, 7, 2], [1, 5, 6, 9, 9, 2]], [[1, 3], [4]], [[1, 4, 4], [1, 4, 4]],
              [[1, 7, 8], [1, 7, 8, 9], [1, 7, 3]], [[1, 2], [1, 2, 6, 6]]]
    p = pack_groups(groups, pack_multiple=8)
    plan = varlen_plan(p)
    n = p.input_ids.shape[1]
    assert plan.cu_q[-1] == n and plan.cu_k[-1] == len(plan.kv_index)  # every token is a query exactly once
    torch.manual_seed(0)
    q, k, v = torch.randn(n, 4, 8), torch.randn(n, 2, 8), torch.randn(n, 2, 8)
    got = varlen_reference(q, k.index_select(0, plan.kv_index), v.index_select(0, plan.kv_index), plan, None)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1).repeat_interleave(2, 0), v.transpose(0, 1).repeat_interleave(2, 0),
        attn_mask=dense_mask(p)[0]).transpose(0, 1)
    assert torch.allclose(got, ref, atol=1e-5)


def test_varlen_plan_is_built_before_the_copy(monkeypatch):
    """`PackedGroups.to(device, "varlen")` builds the plan from the CPU tensors and the mask uses that plan: built
    later from GPU tensors it would make the CPU wait for the GPU at every forward (scorer and trainer)."""
    import engine.prefix_sharing as ps

    p = pack_groups([[[1, 5, 6, 7, 2], [1, 5, 6, 9, 9, 2]], [[1, 3], [4]]])
    for backend in ("dense", "flex"):  # no plan for the other backends
        assert p.to("cpu", backend).varlen is None
    moved = p.to("cpu", "varlen")
    want = varlen_plan(p)
    assert all(torch.equal(getattr(moved.varlen, f), getattr(want, f)) for f in ("kv_index", "cu_q", "cu_k"))
    assert (moved.varlen.max_q, moved.varlen.max_k) == (want.max_q, want.max_k)
    monkeypatch.setattr(ps, "varlen_plan", lambda packed: pytest.fail("plan rebuilt after the copy"))
    carrier = ps.packed_mask(moved, "varlen")
    assert carrier._prefix_sharing_varlen[0] is moved.varlen
    assert moved.to("cpu", "varlen").varlen is moved.varlen  # a second move keeps it


@pytest.mark.parametrize("gqa_keyword", [True, False])
def test_varlen_kernel_call_adapts_to_the_torch_version(monkeypatch, gqa_keyword):
    """torch 2.11 (the GPU box) has no `enable_gqa`: the key/value heads are repeated instead; later versions get the
    keyword. A stand-in with each signature checks what the real kernel would receive (CPU: no FlashAttention)."""
    import torch.nn.attention.varlen as varlen_module

    import engine.prefix_sharing as ps

    p = pack_groups([[[1, 5, 6, 7, 2], [1, 5, 6, 9, 9, 2]], [[1, 3, 4], [1, 3, 8, 8]]])
    plan = varlen_plan(p)
    seen = {}

    def fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
             **kw):  # the keyword set is chosen below through __signature__
        seen.update(kw, window_size=window_size, heads=(query.shape[1], key.shape[1]))
        groups = query.shape[1] // key.shape[1]
        full = (key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1))
        return varlen_reference(query, *full, plan, scale)

    import inspect
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in
              ("query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k")]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in
               ("scale", "window_size") + (("enable_gqa",) if gqa_keyword else ())]
    fake.__signature__ = inspect.Signature(params)
    monkeypatch.setattr(varlen_module, "varlen_attn", fake)
    monkeypatch.setattr(ps, "_VARLEN_PARAMETERS", None)
    n = p.input_ids.shape[1]
    q, k, v = torch.randn(n, 4, 8), torch.randn(n, 2, 8), torch.randn(n, 2, 8)
    kk, vv = k.index_select(0, plan.kv_index), v.index_select(0, plan.kv_index)
    got = ps._varlen_kernel(q, kk, vv, plan, 0.3)
    assert seen["window_size"] == (-1, 0)  # causal, aligned to the bottom right
    assert seen.get("enable_gqa") is (True if gqa_keyword else None)
    assert seen["heads"] == ((4, 2) if gqa_keyword else (4, 4))
    assert torch.allclose(got, varlen_reference(q, kk, vv, plan, 0.3), atol=1e-6)


# ----------------------------------------------------------------------------------------------- decoder


def test_packed_hidden_states_equal_unshared_sequences():
    model = _model().eval()
    decoder, _ = decoder_and_head(model)
    seqs = [[[1, 5, 6, 7, 2], [1, 5, 6, 9, 9, 2]], [[1, 3, 4, 8, 2], [1, 3, 4, 2]], [[1, 11], [1, 12, 13]]]
    with torch.no_grad():
        alone = [decoder(input_ids=torch.tensor([s])).last_hidden_state[0] for g in seqs for s in g]
        with prefix_sharing_attention(model):
            for backend, rows in (("dense", None), ("dense", 9), ("flex_eager", None), ("flex_eager", 9),
                                  ("varlen", None), ("varlen_reference", None)):  # fp32: varlen runs its reference
                p = pack_groups(seqs, pad_id=0, pack_multiple=16, row_tokens=rows)
                assert p.input_ids.shape[0] == (1 if rows is None else 3)
                h = run_packed_decoder(decoder, p, backend)
                for k, ref in enumerate(alone):
                    assert torch.allclose(h[p.index[k]], ref, atol=1e-5), (backend, rows, k)


def test_attention_swap_is_transparent_for_ordinary_calls():
    model = _model().eval()
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 2, 0, 0, 0]])
    mask = (ids != 0).long()
    before = model.config._attn_implementation
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with prefix_sharing_attention(model):
            assert model.config._attn_implementation.startswith("prefix_sharing+")
            with prefix_sharing_attention(model):  # nested: no double wrapping
                inside = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == before
    real = mask.bool()
    assert torch.allclose(inside[real], ref[real], atol=1e-6)


# ----------------------------------------------------------------------------------------------- trainer


def test_batch_has_the_edge_cases(setup):
    _, _, _, batch = setup
    c, r = batch["chosen_input_ids"], batch["rejected_input_ids"]
    cl, rl = batch["chosen_attention_mask"].sum(1), batch["rejected_attention_mask"].sum(1)
    prompt = (batch["chosen_labels"] == -100).logical_and(batch["chosen_attention_mask"] == 1).sum(1)
    shared = [common_prefix_len([c[i, :cl[i]].tolist(), r[i, :rl[i]].tolist()]) for i in range(len(c))]
    assert any(s > p for s, p in zip(shared, prompt.tolist())), "answers sharing first tokens"
    assert any(s == int(rl[i]) for i, s in enumerate(shared)), "identical answers"
    assert (batch["chosen_attention_mask"] == 0).any(), "unshared rows are padded"


@pytest.mark.parametrize("backend", ["dense", "flex_eager", "varlen"])
def test_loss_and_metrics_match_trl(setup, backend):
    model, trl, fast, batch = setup
    model.eval()
    fast.share_prompt_backend = backend
    try:
        with torch.no_grad():
            loss_t, m_t = trl.get_batch_loss_metrics(model, batch)
            loss_f, m_f = fast.get_batch_loss_metrics(model, batch)
    finally:
        fast.share_prompt_backend = FastORPOTrainer.share_prompt_backend
    assert _rel(loss_f, loss_t) < RTOL
    for key in METRICS:
        assert _rel(m_f[key], m_t[key]) < RTOL, (key, m_f[key], m_t[key])
    assert abs(m_t["nll_loss"]) > 1.0 and abs(m_t["log_odds_ratio"]) > 1e-3  # not degenerate


def test_per_pair_logps_match_trl(setup):
    model, trl, fast, batch = setup
    model.eval()
    with torch.no_grad():
        ref = trl.concatenated_forward(model, batch)
        got = fast.concatenated_forward(model, batch)
    for i in (0, 1, 4):  # chosen logps, rejected logps, chosen NLL
        assert _rel(got[i], ref[i]) < 1e-4, i


@pytest.mark.parametrize("checkpointing,backend", [(False, "auto"), (True, "auto"), (True, "varlen")])
def test_lora_gradients_match_trl(setup, checkpointing, backend):
    model, trl, fast, batch = setup
    model.train()
    fast.share_prompt_backend = backend  # "auto" on a CPU: the dense mask
    if checkpointing:  # checkpointed layers recompute their forward inside backward: the packed mask must hold there
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    grads = []
    try:
        for trainer in (trl, fast):
            model.zero_grad()
            with fast.kernels() if trainer is fast else torch.enable_grad():  # what training_step opens
                trainer.get_batch_loss_metrics(model, batch)[0].backward()
            grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        fast.share_prompt_backend = FastORPOTrainer.share_prompt_backend
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.zero_grad()
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for name in grads[0]:
        assert _rel(grads[1][name], grads[0][name]) < RTOL, name


def test_training_steps_run_with_sharing(setup, tmp_path):
    """Two optimizer steps through Trainer.train (training_step, accelerate's backward, clipping)."""
    _, trl, _, _ = setup
    model = _model(1)
    args = ORPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, max_length=64, max_steps=2,
                      per_device_train_batch_size=4, gradient_checkpointing=True, report_to="none",
                      learning_rate=1e-3, logging_steps=1, save_strategy="no")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = FastORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_edge_pairs()),
                              processing_class=_tokenizer(), peft_config=lora)
    trainer.share_prompt = True
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert not trainer.model.config._attn_implementation.startswith("prefix_sharing")  # restored after the step


def test_packing_reads_the_collators_host_copy(setup):
    """With sharing on, the collator adds a CPU copy of the batch, and the packed forward reads that copy (not the
    device tensors, whose `.cpu()` would wait for the GPU). Off, the batch is the collator's own."""
    from engine.fast_orpo import HOST_COPY, HostCopy

    model, trl, fast, batch = setup
    rows = [trl.train_dataset[i] for i in range(len(trl.train_dataset))]
    with_copy = fast.data_collator(rows)
    assert isinstance(with_copy[HOST_COPY], HostCopy)
    host = with_copy[HOST_COPY].tensors
    assert set(host) == {k for k in with_copy if k.startswith(("chosen_", "rejected_")) and torch.is_tensor(with_copy[k])}
    assert all(torch.equal(host[k], batch[k].cpu()) for k in host)
    fast.share_prompt = False
    try:
        assert HOST_COPY not in fast.data_collator(rows)
    finally:
        fast.share_prompt = True
    prepared = fast._prepare_inputs(with_copy)
    assert prepared[HOST_COPY] is with_copy[HOST_COPY]  # the Trainer's device copy leaves it alone
    decoy = dict(batch, chosen_input_ids=torch.zeros_like(batch["chosen_input_ids"]))  # wrong device-side ids
    decoy[HOST_COPY] = HostCopy(host)
    model.eval()
    with torch.no_grad():
        ref = fast.concatenated_forward(model, batch)
        got = fast.concatenated_forward(model, decoy)
    for i in (0, 1, 4):
        torch.testing.assert_close(got[i], ref[i])


# ----------------------------------------------------------------------------------------------- scorer


def test_scorer_sharing_gives_the_same_scores(setup):
    from test_scoring import ANSWERS, PROMPTS, TEXTS  # conversational prompts, the series' chat template

    from offline_default.build import train_tokenizer

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=128)).eval()
    rejected = [[{"role": "assistant", "content": "5 2 9"}], [{"role": "assistant", "content": "t a c"}],
                [{"role": "assistant", "content": "2 5"}]]
    prompts, answers = PROMPTS + PROMPTS, ANSWERS + rejected  # chosen and rejected in one call: prompts shared
    ref = mean_answer_logps(model, tokenizer, prompts, answers)
    for budget in (1, 40, 10_000):  # one group per row, a few, all in one row
        for backend in ("dense", "flex_eager", "varlen"):
            got = mean_answer_logps(model, tokenizer, prompts, answers, max_batch_tokens=budget, share_prompt=True,
                                    share_prompt_backend=backend)
            assert got == pytest.approx(ref, abs=1e-5), (budget, backend)


def test_ddp_wrapped_model_goes_through_the_wrapper(setup):
    """Under DDP the packed forward must run through the DDP wrapper (its gradient hooks arm there): a one-process
    gloo group, same outputs as the bare model, and the wrapper's forward really ran."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, _, fast, batch = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model.eval()
        wrapped = DDP(model)
        calls = []
        hook = wrapped.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
        with torch.no_grad():
            ref = fast.concatenated_forward(model, batch)
            got = fast.concatenated_forward(wrapped, batch)
        hook.remove()
        assert len(calls) == 1 and calls[0]["logits_to_keep"] == 1 and "position_ids" in calls[0]
        for a, b in zip(got, ref, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_sequences_longer_than_the_sliding_window_use_the_unshared_path(setup):
    """The packed mask confines attention to a pair; with a sliding window shorter than a sequence, TRL's attention
    is windowed instead: the trainer must not share then (and still give TRL's loss)."""
    model, trl, fast, batch = setup
    config = model.get_base_model().config
    saved = config.sliding_window
    config.sliding_window = 8  # shorter than most sequences of the batch
    fast.last_packed_tokens = None
    try:
        model.eval()
        with torch.no_grad():
            loss_t = trl.get_batch_loss_metrics(model, batch)[0]
            loss_f = fast.get_batch_loss_metrics(model, batch)[0]
    finally:
        config.sliding_window = saved
    assert fast.last_packed_tokens is None  # the shared path did not run
    assert _rel(loss_f, loss_t) < RTOL


@pytest.mark.parametrize(("capability", "want"), [((9, 0), "varlen"), ((8, 0), "varlen"), ((7, 5), "dense")])
def test_auto_backend_follows_the_gpu(monkeypatch, capability, want):
    """"auto" takes FlashAttention's varlen kernel on an A100/H100; on a T4 (no varlen kernel below compute
    capability 8) never FlexAttention's Triton kernel, but the dense mask with SDPA, as on a CPU."""
    from engine.prefix_sharing import resolve_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert resolve_backend("auto", torch.device("cuda")) == want
    assert resolve_backend("auto", torch.device("cpu")) == "dense"
