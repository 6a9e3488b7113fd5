"""engine.kernels changes which kernels run, never the numbers: fused LoRA == PEFT's LoRA, forward and backward.

CPU, offline, seconds: a tiny random Mistral with LoRA on all seven projections (B made non-zero, so the LoRA update
actually contributes), fp32, compared with and without the fused path.
"""

import copy
import os
import types

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import MistralConfig, MistralForCausalLM

from engine.kernels import attention_backends, fused_lora, lora_layers, swiglu_mlps

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(MistralForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                               target_modules=TARGETS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B starts at zero: make the update count
    return model


def _loss_and_grads(model, ids, fused):
    model.zero_grad()
    nodes = []  # the autograd node that made each MLP's output: which forward really ran
    hooks = [mlp.register_forward_hook(lambda m, a, out: nodes.append(type(out.grad_fn).__name__))
             for mlp in swiglu_mlps(model)]
    with fused_lora(model, active=fused) as n, attention_backends():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, n, nodes


def test_fused_lora_equals_peft_forward_and_backward():
    model = _lora_model()
    model.train()
    ids = torch.randint(3, 100, (3, 17))
    loss_ref, grads_ref, n_off, nodes_off = _loss_and_grads(model, ids, fused=False)
    loss_fused, grads_fused, n_on, nodes_on = _loss_and_grads(model, ids, fused=True)
    assert n_off == 0 and n_on == 2 * len(TARGETS)  # every LoRA layer of both decoder layers was fused
    assert nodes_on == ["SiluMulLoRALinearBackward"] * 2  # both MLPs: down(silu(gate) * up) without the product kept
    assert "SiluMulLoRALinearBackward" not in nodes_off and len(nodes_off) == 2
    assert len(grads_ref) == 2 * 2 * len(TARGETS)  # lora_A and lora_B of each
    torch.testing.assert_close(loss_fused, loss_ref, rtol=1e-5, atol=1e-6)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_fused[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lora_restores_peft_forward_and_skips_what_it_cannot_fuse():
    model = _lora_model(dropout=0.1)  # dropout: the fused forward must fall back to PEFT's
    layers = lora_layers(model)
    assert len(layers) == 2 * len(TARGETS)
    model.eval()  # dropout off in eval, but the module is still nn.Dropout: fallback path either way
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with fused_lora(model):
            assert all("forward" in layer.__dict__ for layer in layers)
            got = model(input_ids=ids).logits
    assert all("forward" not in layer.__dict__ for layer in layers)  # PEFT's own forward is back
    torch.testing.assert_close(got, ref)
    mlp = swiglu_mlps(model)[0]
    patched_before = mlp.forward = types.MethodType(type(mlp).forward, mlp)  # as Liger patches an instance
    with fused_lora(model):
        assert mlp.forward != patched_before
    assert mlp.__dict__["forward"] is patched_before  # the earlier instance forward is put back
    assert "_forward_unfused" not in mlp.__dict__


def test_fused_lora_under_autocast_matches_within_bf16_rounding():
    model = _lora_model(seed=1)
    ids = torch.randint(3, 100, (2, 11))
    reference = copy.deepcopy(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference(input_ids=ids).logits.float()
        with fused_lora(model):
            got = model(input_ids=ids).logits.float()
    assert (got - ref).abs().max() <= 2e-2 * ref.abs().max()  # one bf16 rounding less, nothing more


@pytest.mark.parametrize("names", [("MATH",), ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")])
def test_attention_backends_do_not_change_logits(names):
    model = _lora_model().eval()
    ids = torch.randint(3, 100, (2, 13))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with attention_backends(names):
            got = model(input_ids=ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_fast_trainer_training_step_gives_trls_gradients(tmp_path):
    """Through `training_step` (fused LoRA + attention backends + the chunked loss) the LoRA gradients are TRL's."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from engine.fast_orpo import FastORPOTrainer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(97)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<unk>")
    g = torch.Generator().manual_seed(0)
    words = lambda k: " ".join(f"w{int(i)}" for i in torch.randint(0, 97, (k,), generator=g))  # noqa: E731
    data = Dataset.from_list([{"prompt": words(3 + i), "chosen": " " + words(2 + 2 * i), "rejected": " " + words(9 - i)}
                              for i in range(4)])
    args = ORPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_length=64, report_to="none",
                      per_device_train_batch_size=4, beta=0.1)
    grads = []
    for cls in (ORPOTrainer, FastORPOTrainer):
        model = _lora_model()  # same seed: same base weights and same (non-zero) adapters
        trainer = cls(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we skip
        model.zero_grad()
        trainer.training_step(trainer.model, batch)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert len(grads[0]) == 2 * 2 * len(TARGETS) and grads[0].keys() == grads[1].keys()
    for name, g_trl in grads[0].items():
        torch.testing.assert_close(grads[1][name], g_trl, rtol=1e-3, atol=1e-6, msg=name)


def test_apply_liger_kernels_patches_the_instance_or_says_why_not(monkeypatch):
    """Notebook 05 applies Liger's kernels when the profile trained with them: the Trainer's own instance patcher
    is called with the kernels asked for; without liger-kernel installed, one line says so and nothing changes."""
    import importlib.util
    import sys
    import types

    from engine.kernels import apply_liger_kernels

    model = object()
    calls = []
    fake = types.ModuleType("liger_kernel.transformers")
    fake._apply_liger_kernel_to_instance = lambda model, **kw: calls.append((model, kw))
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a))
    msg = apply_liger_kernels(model, rope=True, rms_norm=True, swiglu=True)
    assert calls == [(model, {"rope": True, "rms_norm": True, "swiglu": True})]
    assert "rope, rms_norm, swiglu" in msg
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a))
    assert "not installed" in apply_liger_kernels(model, rope=True)
    assert len(calls) == 1


def _lora_on_4bit_base(weight: torch.Tensor, compute_dtype=torch.float32):
    """A PEFT LoRA model (r=4) around one bitsandbytes NF4 linear layer holding `weight` [out, in], quantized on the
    CPU; returns (model, its LoRA layer)."""
    import bitsandbytes as bnb

    quantized = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=False, compute_dtype=compute_dtype,
                                  quant_type="nf4")
    quantized.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
    base = torch.nn.Sequential(quantized.to("cpu"))
    base.is_loaded_in_4bit = True  # what from_pretrained(quantization_config=...) marks; PEFT picks its layer by it
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    [layer] = lora_layers(model)
    return model, layer


def test_lora_linear_on_a_4bit_base_equals_peft_forward_and_backward():
    """The QLoRA case itself: a bitsandbytes NF4 base (quantized on the CPU), fp32 compute, LoRALinear vs PEFT."""
    torch.manual_seed(0)
    model, layer = _lora_on_4bit_base(torch.nn.Linear(64, 96, bias=False).weight.data.clone())
    assert type(layer).__module__ == "peft.tuners.lora.bnb"  # PEFT's 4-bit LoRA layer, not a plain one
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
    x = torch.randn(3, 5, 64)

    def run(fused):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        with fused_lora(model, active=fused):
            y = model(xi)
        assert (type(y.grad_fn).__name__ == "LoRALinearBackward") == fused  # one node: the fused path really ran
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()  # an uneven upstream gradient
        return y.detach(), xi.grad, layer.lora_A["default"].weight.grad.clone(), layer.lora_B["default"].weight.grad.clone()

    for got, ref in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_a_4bit_weight_repacked_for_cpu_inference_keeps_pefts_forward():
    """bitsandbytes repacks a 4-bit weight for its CPU inference kernel (eval mode, no gradients, AVX512-BF16 CPUs):
    the repacked layout must never be dequantized as if it were the ordinary one. Notebook 05 scores the base model
    (adapter off, bitsandbytes' own forward: repacks) before the tuned one; the tuned scores came out wrong before."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from engine.kernels import frozen_weight_kind

    torch.manual_seed(0)
    model, layer = _lora_on_4bit_base(torch.randn(128, 64))
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        reference = model(x)  # train mode (PEFT's default): bitsandbytes leaves the weight as it is
    weight = layer.get_base_layer().weight
    assert frozen_weight_kind(layer.get_base_layer()) == "4bit"
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, weight.quant_state)
    assert frozen_weight_kind(layer.get_base_layer()) is None
    with torch.no_grad(), fused_lora(model):
        got = model(x)
    assert got.grad_fn is None
    # bitsandbytes' CPU kernel keeps the block scales in bf16: close, not equal (read as the ordinary layout, the
    # repacked weight gave log-probs of -11 instead of -0.003 in notebook 05)
    assert (got - reference).abs().max() <= 0.02 * reference.abs().max()


def test_a_4bit_base_keeps_pefts_forward_when_activations_are_not_in_its_compute_dtype():
    """Without autocast, fp32 activations (PEFT's k-bit preparation keeps norms in fp32) into a 4-bit layer that
    computes in bf16: bitsandbytes casts them to bf16 for its matmul; fused, the big matmul would run in fp32 (on a
    GPU ~10x slower: an fp16 run's evaluations were). So PEFT's forward runs; with autocast on, the fused one."""
    from engine.kernels import lora_parts

    torch.manual_seed(0)
    model, layer = _lora_on_4bit_base(torch.randn(96, 64), compute_dtype=torch.bfloat16)
    x = torch.randn(2, 5, 64)
    assert lora_parts(layer, x) is None
    with fused_lora(model):
        assert type(model(x).grad_fn).__name__ != "LoRALinearBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lora_parts(layer, x)[-1] == torch.bfloat16
        assert lora_parts(layer, x.bfloat16()) is not None
    assert lora_parts(layer, x.bfloat16()) is None  # bf16 x, fp32 LoRA weights, no autocast: dtypes differ
