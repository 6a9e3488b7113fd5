"""benchmarks/orpo_speed.py runs notebook 04's OWN cells for the fast path: extraction and config mapping hold.

CPU, offline, seconds: the cell extraction must find exactly one code cell per marker, in notebook order, and
exec'ing those cells with a tiny random Mistral (hidden 64, 2 layers) and a tiny profile config must build the trainer
the config asks for (class, batch, learning rate, beta, LoRA, checkpointed layers). If a notebook edit moves, splits or
duplicates a cell, or stops reading a cfg field, these tests fail instead of the benchmark silently drifting.
"""

import copy
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

from helpers.profiles import resolve_config  # noqa: E402
from scripts import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/orpo_speed.py")


def test_each_marker_is_in_exactly_one_code_cell_of_notebook_04(bench):
    assert bench.NOTEBOOK_04 == ROOT / "notebooks" / "04_orpo_training.ipynb"
    nb = json.loads(bench.NOTEBOOK_04.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for marker in bench.CELL_MARKERS:
        assert sum(marker in src for src in code) == 1, marker
    cells = bench.notebook_cells()
    assert len(cells) == 3
    for marker, src in zip(bench.CELL_MARKERS, cells, strict=True):
        assert marker in src
    # the trainer cell is the one that swaps in the engine's trainer (checkpoint_layers, share_prompt from cfg)
    assert "fast_orpo_trainer(cfg)" in cells[2]
    assert "print_trainable_parameters()" in cells[2]


def test_extraction_fails_loudly_on_a_missing_or_duplicated_cell(bench, tmp_path):
    nb = json.loads(bench.NOTEBOOK_04.read_text())
    lora = next(c for c in nb["cells"] if c["cell_type"] == "code" and bench.CELL_MARKERS[0] in "".join(c["source"]))
    duplicated = copy.deepcopy(nb)
    duplicated["cells"].append(copy.deepcopy(lora))
    missing = copy.deepcopy(nb)
    missing["cells"] = [c for c in nb["cells"] if c is not lora and
                        not (c["cell_type"] == "code" and bench.CELL_MARKERS[0] in "".join(c["source"]))]
    for name, bad in (("duplicated", duplicated), ("missing", missing)):
        path = tmp_path / f"{name}.ipynb"
        path.write_text(json.dumps(bad))
        with pytest.raises(RuntimeError, match="exactly one code cell"):
            bench.notebook_cells(path)


@pytest.fixture(scope="module")
def tiny_world(bench):
    from transformers import MistralConfig, MistralForCausalLM

    from offline_default.build import train_tokenizer

    rng = random.Random(0)
    words = lambda k: " ".join(f"w{rng.randrange(200)}" for _ in range(k))  # noqa: E731
    rows = []
    for _ in range(24):  # the benchmark's row format (notebook 02's columns), short enough for a CPU
        p, c, r = words(rng.randint(2, 10)), words(rng.randint(1, 12)), words(rng.randint(1, 12))
        rows.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                     "rejected": [{"role": "assistant", "content": r}], "prompt_tokens": len(p.split()) + 5,
                     "chosen_tokens": len(c.split()) + 1, "rejected_tokens": len(r.split()) + 1})
    assert set(rows[0]) <= set(bench.synthetic_pairs(1, 300, seed=0)[0])
    texts = [f"### User:\n{r['prompt'][0]['content']}\n\n### Assistant:\n{r['chosen'][0]['content']}" for r in rows]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    data = bench.make_data(rows[:16], rows[16:])

    def model():
        torch.manual_seed(0)
        return MistralForCausalLM(MistralConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)).float()

    return tokenizer, data, model


CASES = {
    "tiny-profile": {},
    "tiny-fast-path": dict(fast_orpo_trainer=True, checkpoint_layers=1, gradient_checkpointing=True,
                           per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3,
                           beta=0.25, lora_r=8, lora_alpha=16, lr_scheduler_type="cosine",
                           adaptive_checkpointing=False),
}


@pytest.mark.parametrize("case", CASES)
def test_notebook_cells_build_the_trainer_cfg_asks_for(bench, tiny_world, tmp_path, case):
    from trl.experimental.orpo import ORPOTrainer

    from engine.fast_orpo import FastORPOTrainer

    tokenizer, data, model = tiny_world
    cfg = resolve_config("tiny", {**CASES[case], **bench.benchmark_overrides(3)})
    ns = bench.run_notebook_cells(bench.notebook_namespace(cfg, "cpu", tmp_path / "run", model(), tokenizer, data))
    trainer, args = ns["trainer"], ns["trainer"].args

    assert isinstance(trainer, FastORPOTrainer) is cfg.fast_orpo_trainer and isinstance(trainer, ORPOTrainer)
    if cfg.fast_orpo_trainer:
        assert trainer.checkpoint_layers == cfg.checkpoint_layers
        assert trainer.adaptive_checkpointing is cfg.adaptive_checkpointing is False  # the parameter reaches it
    assert args.per_device_train_batch_size == cfg.per_device_train_batch_size
    assert args.gradient_accumulation_steps == cfg.gradient_accumulation_steps
    assert args.learning_rate == pytest.approx(cfg.learning_rate)
    assert args.beta == pytest.approx(cfg.beta)
    assert args.max_length == cfg.max_length
    assert args.max_steps == 3 and args.eval_steps == args.save_steps == args.logging_steps == bench.NEVER
    assert str(args.lr_scheduler_type).lower().endswith(cfg.lr_scheduler_type)
    assert args.gradient_checkpointing == cfg.gradient_checkpointing
    assert args.train_sampling_strategy == ("group_by_length" if cfg.fast_orpo_trainer else "random")
    assert args.output_dir == str(ns["run"].checkpoints)
    assert not args.use_liger_kernel  # CPU: the cell turns it off
    lora = ns["peft_config"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    assert trainer.model.peft_config["default"].r == cfg.lora_r
    assert len(trainer.train_dataset) == len(data["train"])  # the notebook's train_dataset, tokenized by TRL


def test_the_benchmark_instrumentation_keeps_the_notebooks_trainer_class(bench, tiny_world, tmp_path):
    from engine.fast_orpo import FastORPOTrainer

    tokenizer, data, model = tiny_world
    cfg = resolve_config("tiny", {"fast_orpo_trainer": True, "per_device_train_batch_size": 4,
                                  **bench.benchmark_overrides(2)})
    ns = bench.run_notebook_cells(bench.notebook_namespace(cfg, "cpu", tmp_path / "run", model(), tokenizer, data))
    trainer = bench.instrument(ns["trainer"])
    assert isinstance(trainer, FastORPOTrainer)
    trainer.train()
    res = bench.throughput(trainer.stamps, 1, trainer.stamps[0][0] - 1.0)
    assert len(trainer.stamps) == 2 and res["timed_steps"] == 1 and res["real_tokens"] > 0
    assert not (ns["run"].checkpoints).exists() or not any(ns["run"].checkpoints.iterdir())  # no end-of-run save


def test_scoring_bound_counts_mistral_7b_and_the_eval_pairs(bench):
    # the linear layers + embeddings + lm_head + norms are Mistral-7B-v0.1's published 7,241,732,096 parameters
    cfg = bench.MISTRAL_7B
    norms = (2 * cfg["num_hidden_layers"] + 1) * cfg["hidden_size"]
    assert bench.linear_params(cfg) + 2 * cfg["vocab_size"] * cfg["hidden_size"] + norms == 7_241_732_096
    result = {"eval": {"pairs": 20, "evaluate_seconds_extrapolated": 100.0, "scorer_seconds": 50.0},
              "matmul_ceiling_tflops": {"a": 500.0, "b": 800.0}}
    bound = bench.scoring_bound(result)
    rows = bench.synthetic_pairs(20, cfg["vocab_size"], seed=bench.EVAL_SEED)
    tokens = sum(2 * r["prompt_tokens"] + r["chosen_tokens"] + r["rejected_tokens"] for r in rows)
    assert bound["tokens_as_scored"] == tokens and bound["tokens_prompt_once"] < tokens
    floor = 2 * bench.linear_params(cfg) * tokens / 800e12  # the best measured rate is the ceiling
    assert bound["floor_seconds_as_scored"] == pytest.approx(floor, abs=0.05)
    assert bound["max_speedup_as_scored"] == pytest.approx(100.0 / floor, rel=1e-2)
    assert bench.scoring_bound({"eval": None}) == {}


def test_pair_token_counts_and_ceiling_fraction(bench):
    """real = non-pad tokens of both rows; needed = each pair's common prefix once; head = the positions the loss
    reads logits at (chosen: every token after the first; rejected: answer tokens)."""
    c = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 4, 2, 0, 0]])
    r = torch.tensor([[1, 5, 6, 9, 9, 2], [1, 3, 8, 2, 0, 0]])
    inputs = {"chosen_input_ids": c, "rejected_input_ids": r, "chosen_attention_mask": (c != 0).long(),
              "rejected_attention_mask": (r != 0).long(),
              "rejected_labels": torch.tensor([[-100, -100, -100, 9, 9, 2], [-100, -100, 8, 2, -100, -100]])}
    real, needed, head = bench.pair_token_counts(inputs)
    assert real == 5 + 6 + 4 + 4
    assert needed == real - 3 - 2  # common prefixes [1 5 6] and [1 3]
    assert head == (4 + 3) + (3 + 2)
    run = {"needed_tokens": 1000, "lm_head_positions": 500, "seconds": 2.0}
    cfg = bench.MISTRAL_7B
    got = bench.ceiling_fraction(run, cfg, 800.0)
    flops = 4 * bench.linear_params(cfg) * 1000 + 4 * cfg["vocab_size"] * cfg["hidden_size"] * 500
    assert got["ceiling_fraction"] == pytest.approx(flops / 2.0 / 800e12, abs=1e-3)
    assert bench.ceiling_fraction(run, cfg, None) == {}


@pytest.mark.slow
def test_the_speed_benchmark_runs_end_to_end_on_a_tiny_model(bench, tmp_path):
    """`orpo_speed.py --tiny`: every part of one benchmark run on a CPU (numbers meaningless, plumbing real). The
    h100 profile shares prompts, so the comparison run is `unshared`: it must compute more tokens per needed token
    (padding, the prompt twice) than notebook 04's fast run, and a `noshare` variant switches sharing off."""
    result = bench.main(["--tiny", "--out", str(tmp_path / "tiny.json"), "--work-dir", str(tmp_path / "work"),
                         "--variants", "2:1:noshare,2:1:fixed", "--scorer-budgets", "64"])
    runs = result["runs"]
    assert {"seed", "fast", "unshared", "t4_settings", "fast_mb2_ckpt1_noshare", "fast_mb2_ckpt1_fixed"} <= set(runs)
    # checkpointing sized per batch: recorded per step; the `fixed` variant checkpoints its 1 layer at every step
    fixed = runs["fast_mb2_ckpt1_fixed"]["checkpointed_layers"]["per_step"]
    assert fixed and set(fixed) == {1}
    assert runs["fast"]["checkpoint_reference_tokens"] > 0
    assert all(r.get("tokens_per_s") for r in runs.values())
    assert runs["fast"]["share_prompt"] and not runs["unshared"]["share_prompt"]
    assert not runs["fast_mb2_ckpt1_noshare"]["share_prompt"]
    assert runs["fast"]["computed_over_needed"] < runs["unshared"]["computed_over_needed"]
    assert "speedup_fast_over_unshared" in result["summary"] and "shared" not in runs
    assert result["same_math"]["ok_1e-3"] and result["same_math"]["shared_ok"]
    assert result["eval"]["pairs"] > 0 and result["eval"]["scorer_shared_seconds"] > 0
    assert result["eval"]["shared_by_max_batch_tokens"]["64"]["seconds"] > 0
    assert json.loads((tmp_path / "tiny.json").read_text())["runs"].keys() == runs.keys()
    # the shared scorer alone (--skip unshared_eval): no unshared timing, the shared one and its bound remain
    result = bench.main(["--tiny", "--out", str(tmp_path / "tiny2.json"), "--work-dir", str(tmp_path / "work2"),
                         "--skip", "t4,fast,unshared_eval"])
    e = result["eval"]
    assert e["scorer_seconds"] is None and e["speedup"] is None and e["scorer_shared_seconds"] > 0


@pytest.mark.slow
def test_the_scorer_variants_script_runs_on_a_tiny_model(tmp_path):
    """`benchmarks/scorer_variants.py --tiny`: its model, adapter and variants run on a CPU (the GPU-only Liger
    variant and the profile are skipped there); changing the row budget keeps the scores."""
    result = load_script("benchmarks/scorer_variants.py").main(["--tiny", "--pairs", "8", "--work-dir", str(tmp_path), "--out", str(tmp_path / "s.json")])
    assert {"as_notebook_05", "budget_32k", "adapter_off", "lora_bf16"} <= set(result["variants"])
    assert result["variants"]["budget_32k"]["max_abs_diff_vs_notebook"] < 1e-4
    assert json.loads((tmp_path / "s.json").read_text())["pairs"] == 8


def test_gpu_idle_gaps_are_charged_to_the_cpu_ops_running_then(bench):
    """`idle_by_cpu_op`: a gap between kernels goes to the outermost CPU op(s) overlapping it, a long op that started
    long before the gap included (many short ops start after it); what no op covers is "(no op)"."""
    from types import SimpleNamespace as NS

    cpu_type = torch.autograd.DeviceType.CPU
    op = lambda key, a, b: NS(key=key, time_range=NS(start=a, end=b), device_type=cpu_type, cpu_parent=None)  # noqa: E731
    kernel = lambda a, b: NS(time_range=NS(start=a, end=b))  # noqa: E731
    events = [op("long_op", 0, 1000)] + [op(f"short{i}", 10 + i, 10.5 + i) for i in range(80)] + [
        op("late_op", 1100, 1150), op("nested", 1110, 1120)]
    events[-1].cpu_parent = events[-2]  # not outermost: never charged
    kernels = [kernel(0, 100), kernel(200, 300), kernel(1090, 1100), kernel(1200, 1210)]
    got = {key: (ms, n) for key, ms, n in bench.idle_by_cpu_op(events, kernels)}
    assert got["long_op"] == (0.8, 2)  # gaps 100 -> 200 and 300 -> 1000 of 300 -> 1090: 81 ops started since
    assert set(got) == {"long_op", "late_op", "(no op)"}, got
