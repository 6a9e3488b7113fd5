"""helpers.qlora_math against Mistral-7B-v0.1's known numbers and against a real bitsandbytes 4-bit load (CPU, seconds).

The 4-bit load quantizes a tiny random Mistral exactly as notebook 03 loads the real one (NF4, double quantization),
so the byte layout the estimate assumes (packed weights, absmax scales, nested scales, code tables) is checked against
the tensors bitsandbytes actually creates, not against numbers typed in.
"""

import pytest
import torch

from helpers.modeling import logical_parameter_count
from helpers.qlora_math import (ALL_PROJECTIONS, MISTRAL_7B_CONFIG, _quant_state_bytes, lora_trainable,
                                memory_estimate, mistral_7b_config, parameter_counts, qlora_table)

bnb = pytest.importorskip("bitsandbytes")


def tiny_config(**overrides):
    from transformers import MistralConfig

    kw = dict(vocab_size=1000, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=False, sliding_window=None)
    return MistralConfig(**{**kw, **overrides})


# ---------------------------------------------------------------- Mistral-7B-v0.1, exact
def test_mistral_7b_parameters_exact():
    for config in (MISTRAL_7B_CONFIG, mistral_7b_config()):
        counts = parameter_counts(config)
        assert counts["total"] == 7_241_732_096
        assert counts["embeddings"] == counts["lm_head"] == 131_072_000
        assert counts["decoder_linear"] == 6_979_321_856 and counts["norms"] == 266_240


def test_mistral_7b_lora_exact():
    trainable = lora_trainable(MISTRAL_7B_CONFIG, 16, ALL_PROJECTIONS)
    assert trainable == 41_943_040 == lora_trainable(MISTRAL_7B_CONFIG, 16, "all-linear")
    assert round(100 * trainable / 7_241_732_096, 2) == 0.58
    with pytest.raises(ValueError, match="lm_head"):
        lora_trainable(MISTRAL_7B_CONFIG, 16, ["q_proj", "lm_head"])


def test_mistral_7b_memory_matches_the_h100_measurement():
    # The H100 run's model.get_memory_footprint(): 3,828 MiB in 4 bits (bf16 embeddings / lm_head / norms),
    # 13,812 MiB in 16 bits, 3.61x. get_memory_footprint counts parameters and buffers only, so the quant state
    # (absmax etc., +105.9 MiB) is reported separately and is not part of the comparison.
    mem = memory_estimate(MISTRAL_7B_CONFIG)
    assert mem["footprint_4bit_bytes"] == 6_979_321_856 // 2 + 262_410_240 * 2 + 512
    assert abs(mem["footprint_4bit_MiB"] - 3828) / 3828 < 0.001
    assert abs(mem["params_16bit_MiB"] - 13812) / 13812 < 0.001
    assert mem["saving_factor"] == 3.61
    assert 105 < mem["quant_state_MiB"] < 107 and mem["bits_per_weight"] == 4.127
    assert memory_estimate(MISTRAL_7B_CONFIG, double_quant=False)["bits_per_weight"] == 4.5


# ---------------------------------------------------------------- the config arithmetic vs real modules
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_counts_match_a_real_mistral(tie):
    from transformers import MistralForCausalLM

    model = MistralForCausalLM(tiny_config(tie_word_embeddings=tie))
    assert parameter_counts(model.config)["total"] == sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_a_real_llama_with_biases():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=500, hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(config)
    assert parameter_counts(config)["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("shape,blocksize", [((384, 128), 64), ((100, 37), 64), ((512, 520), 128)])
def test_quant_state_layout_matches_bitsandbytes(shape, blocksize, double_quant):
    _, state = bnb.functional.quantize_4bit(torch.randn(shape), blocksize=blocksize, quant_type="nf4",
                                            compress_statistics=double_quant)
    tensors = [state.absmax, state.code]
    if double_quant:
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    measured = sum(t.numel() * t.element_size() for t in tensors)
    n = shape[0] * shape[1]
    assert measured == _quant_state_bytes(n, double_quant=double_quant, blocksize=blocksize)


# ---------------------------------------------------------------- a real 4-bit load + LoRA
@pytest.fixture(scope="module")
def model_4bit(tmp_path_factory):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MistralForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-mistral")
    MistralForCausalLM(tiny_config()).save_pretrained(folder)  # float32
    bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb_config, device_map="cpu")


def test_estimate_matches_a_real_4bit_load(model_4bit):
    # The saved model is float32, so the unquantized parts load at 4 bytes (compute_bytes=4). The estimate is
    # exact, not approximate: get_memory_footprint() = packed uint8 weights + fp32 embeddings/lm_head/norms + the
    # two fp32 RoPE buffers; the quant state is per tensor and fully determined by the weight shapes.
    config = model_4bit.config
    mem = memory_estimate(config, compute_bytes=4)
    assert model_4bit.get_memory_footprint() == mem["footprint_4bit_bytes"]
    assert logical_parameter_count(model_4bit) == parameter_counts(config)["total"] == mem["parameters"]
    states = [p.quant_state for p in model_4bit.parameters() if getattr(p, "quant_state", None) is not None]
    assert len(states) == 7 * config.num_hidden_layers  # every projection, not lm_head
    measured = sum(t.numel() * t.element_size() for s in states
                   for t in (s.absmax, s.code, s.offset, s.state2.absmax, s.state2.code))
    assert measured == mem["quant_state_bytes"]
    assert sum(s.shape.numel() for s in states) == mem["quantized_params"]


def test_lora_trainable_matches_peft(model_4bit):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model_4bit, LoraConfig(r=16, lora_alpha=32, target_modules=list(ALL_PROJECTIONS),
                                                       task_type="CAUSAL_LM"))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == lora_trainable(model_4bit.config, 16, ALL_PROJECTIONS) == 77_824
    peft_model.unload()  # leave the shared fixture as it was


def test_qlora_table_is_computed_and_aligned():
    table = qlora_table(tiny_config(), 16, ALL_PROJECTIONS, compute_bytes=4)
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1, "columns are not aligned"
    assert "Mistral-7B-v0.1" in lines[0] and "this run" in lines[0]
    assert "7,241,732,096" in table and "41,943,040" in table and "0.58%" in table
    assert "13,812.51" in table and "3,828.51" in table and "3.61x" in table
    assert f"{parameter_counts(tiny_config())['total']:,}" in table and "77,824" in table
