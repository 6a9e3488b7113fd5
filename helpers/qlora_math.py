"""QLoRA arithmetic from a model config: parameters, LoRA's trainable share, 4-bit vs 16-bit bytes (notebooks 03, 04).
Nothing is loaded (works offline, for Mistral / Llama-style decoders); more in docs/design-decisions.md."""

from __future__ import annotations

import math
from types import SimpleNamespace

# Mistral-7B-v0.1's config.json (huggingface.co/mistralai/Mistral-7B-v0.1), so the numbers work offline.
# `head_dim` is not in the Hub file: it is hidden_size / num_attention_heads = 128, written out here.
MISTRAL_7B_CONFIG: dict = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 32768, "initializer_range": 0.02,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "use_cache": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}

MISTRAL_7B_NAME = "Mistral-7B-v0.1"
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_PROJECTIONS = ATTENTION_MODULES + MLP_MODULES  # the QLoRA paper's "all linear layers" (peft's "all-linear")
MiB = 2**20


def mistral_7b_config():
    """Mistral-7B-v0.1's config as a `transformers.MistralConfig`, built offline from MISTRAL_7B_CONFIG."""
    from transformers import MistralConfig
    return MistralConfig(**{k: v for k, v in MISTRAL_7B_CONFIG.items() if k not in ("architectures", "model_type")})


def _cfg(config):
    """Attribute access for a transformers config or a plain dict (e.g. MISTRAL_7B_CONFIG)."""
    return SimpleNamespace(**config) if isinstance(config, dict) else config


def _head_dim(c) -> int:
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def linear_shapes(config) -> dict[str, tuple[int, int, bool]]:
    """(in_features, out_features, has_bias) of each linear projection of ONE decoder layer."""
    c = _cfg(config)
    hidden, inter, head_dim = c.hidden_size, c.intermediate_size, _head_dim(c)
    q_out = c.num_attention_heads * head_dim
    kv_out = (getattr(c, "num_key_value_heads", None) or c.num_attention_heads) * head_dim
    attn_bias, mlp_bias = bool(getattr(c, "attention_bias", False)), bool(getattr(c, "mlp_bias", False))
    return {"q_proj": (hidden, q_out, attn_bias), "k_proj": (hidden, kv_out, attn_bias),
            "v_proj": (hidden, kv_out, attn_bias), "o_proj": (q_out, hidden, attn_bias),
            "gate_proj": (hidden, inter, mlp_bias), "up_proj": (hidden, inter, mlp_bias),
            "down_proj": (inter, hidden, mlp_bias)}


def _linear_params(shapes: dict, names) -> int:
    return sum(i * o + (o if bias else 0) for n, (i, o, bias) in shapes.items() if n in names)


def parameter_counts(config) -> dict:
    """Parameters by part: embeddings, attention, mlp, norms, lm_head (0 when tied), total, and decoder_linear
    (attention + mlp: what bitsandbytes quantizes). Mistral-7B-v0.1: total 7,241,732,096."""
    c = _cfg(config)
    shapes, layers = linear_shapes(c), c.num_hidden_layers
    counts = {"embeddings": c.vocab_size * c.hidden_size,
              "attention": layers * _linear_params(shapes, ATTENTION_MODULES),
              "mlp": layers * _linear_params(shapes, MLP_MODULES),
              "norms": (2 * layers + 1) * c.hidden_size,  # input + post-attention RMSNorm per layer, final norm
              "lm_head": 0 if getattr(c, "tie_word_embeddings", False) else c.vocab_size * c.hidden_size}
    counts["total"] = sum(counts.values())
    counts["decoder_linear"] = counts["attention"] + counts["mlp"]
    return counts


def _targets(target_modules) -> tuple[str, ...]:
    if isinstance(target_modules, str):
        if target_modules == "all-linear":  # peft's shorthand: every linear but the output layer
            return ALL_PROJECTIONS
        target_modules = (target_modules,)
    unknown = sorted(set(target_modules) - set(ALL_PROJECTIONS))
    if unknown:
        raise ValueError(f"Unknown target module(s) {unknown}: expected some of {list(ALL_PROJECTIONS)}.")
    return tuple(target_modules)


def lora_trainable(config, r: int, target_modules=ALL_PROJECTIONS) -> int:
    """LoRA's trainable parameters: r * (in + out) per targeted linear (A is r x in, B is out x r), per layer (04).
    Mistral-7B-v0.1, r=16 on the 7 projections: 41,943,040 (0.58% of 7,241,732,096)."""
    shapes, targets = linear_shapes(config), _targets(target_modules)
    return _cfg(config).num_hidden_layers * sum(r * (i + o) for n, (i, o, _) in shapes.items() if n in targets)


def _quant_state_bytes(n: int, *, double_quant: bool, blocksize: int) -> int:
    """Bytes of one weight's QuantState (see the module docstring), counted per tensor as bitsandbytes holds them."""
    blocks = math.ceil(n / blocksize)
    code4 = 16 * 4  # the NF4 / FP4 code table, fp32
    if not double_quant:
        return blocks * 4 + code4  # fp32 absmax per block
    nested_blocks = math.ceil(blocks / 256)
    # uint8 absmax per block + fp32 offset + nested fp32 absmax per 256 blocks + 256-entry fp32 dynamic code
    return blocks + 4 + nested_blocks * 4 + 256 * 4 + code4


def memory_estimate(config, *, quant_type: str = "nf4", double_quant: bool = True, blocksize: int = 64,
                    compute_bytes: int = 2) -> dict:
    """Bytes of the 4-bit model as bitsandbytes stores it, against all parameters in 16 bits (notebook 03). Mistral-7B
    (bf16, `compute_bytes` 2; 4 is the fp32 CPU path): footprint 3,828.5 MiB vs 13,812.5 MiB in 16 bits, 3.61x."""
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        raise ValueError(f"invalid blocksize {blocksize} (bitsandbytes accepts 32 ... 4096, powers of two)")
    c = _cfg(config)
    counts, shapes, layers = parameter_counts(c), linear_shapes(c), c.num_hidden_layers
    weights = [i * o for i, o, _ in shapes.values()]
    biases = sum(o for _, o, bias in shapes.values() if bias)
    quantized = layers * sum(weights)
    packed = layers * sum(math.ceil(n / 2) for n in weights)
    quant_state = layers * sum(_quant_state_bytes(n, double_quant=double_quant, blocksize=blocksize) for n in weights)
    unquantized = counts["total"] - quantized  # embeddings, norms, lm_head, biases
    assert unquantized == counts["total"] - counts["decoder_linear"] + layers * biases
    buffers = 2 * (_head_dim(c) // 2) * 4
    footprint = packed + unquantized * compute_bytes + buffers
    params_16bit = counts["total"] * 2
    out = {"parameters": counts["total"], "quantized_params": quantized, "unquantized_params": unquantized,
           "packed_4bit_bytes": packed, "quant_state_bytes": quant_state,
           "unquantized_bytes": unquantized * compute_bytes, "buffer_bytes": buffers,
           "footprint_4bit_bytes": footprint, "total_4bit_bytes": footprint + quant_state,
           "params_16bit_bytes": params_16bit}
    for key in ("footprint_4bit", "quant_state", "total_4bit", "params_16bit"):
        out[f"{key}_MiB"] = round(out[f"{key}_bytes"] / MiB, 2)
    out["saving_factor"] = round(params_16bit / footprint, 2)
    out["bits_per_weight"] = round(8 * (packed + quant_state) / quantized, 3)
    return out


def qlora_table(run_config, lora_r: int, target_modules=ALL_PROJECTIONS, *, compute_bytes: int = 2,
                run_name: str = "this run", **kw) -> str:
    """Notebooks 03 (memory rows) and 04 (LoRA rows): this run's model beside Mistral-7B-v0.1 (bf16), a text table."""
    columns = []
    for config, cbytes in ((run_config, compute_bytes), (MISTRAL_7B_CONFIG, 2)):
        total = parameter_counts(config)["total"]
        lora = lora_trainable(config, lora_r, target_modules)
        mem = memory_estimate(config, compute_bytes=cbytes, **kw)
        columns.append([f"{total:,}", f"{lora:,}", f"{100 * lora / total:.2f}%",
                        *(f"{mem[f'{k}_bytes'] / MiB:,.2f}" for k in ("params_16bit", "footprint_4bit", "total_4bit")),
                        f"{mem['saving_factor']:.2f}x"])
    labels = ["parameters", f"LoRA trainable (r={lora_r})", "LoRA trainable % of total", "16-bit MiB",
              "4-bit MiB (get_memory_footprint)", "4-bit MiB + quant state", "saving factor (16-bit / 4-bit)"]
    rows = [("", run_name, MISTRAL_7B_NAME), *zip(labels, *columns)]
    w0, w1, w2 = (max(map(len, column)) for column in zip(*rows))
    return "\n".join(f"{label:<{w0}}  {a:>{w1}}  {b:>{w2}}" for label, a, b in rows)
