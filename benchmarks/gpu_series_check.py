"""GPU end-to-end check: the whole notebook series 01 -> 05, through the runner, on a Mistral-7B-shaped model.

What it proves (on one GPU, with no Hub access):
  * the series runs end to end on the GPU path: `python -m runner --profile h100` and `--profile t4`
    (the latter rehearsed on the same GPU with ORPO_ASSUME_COMPUTE_CAPABILITY=7.5, so notebook 01 decides fp16 +
    sdpa as on a real T4) complete and write eval.json, train_summary.json, data_report.json, metrics.jsonl and
    report.md, with the dtype / attention decisions each profile must make;
  * on a model with Mistral-7B-v0.1's exact config (random weights, loaded in 4-bit NF4 by notebooks 03-05), a
    32,000-token tokenizer WITHOUT a chat template and without a pad token (as Mistral-7B-v0.1 ships: notebook 02
    must set both), and UltraFeedback-schema data (`train_prefs` / `test_prefs`, saved with save_to_disk) of
    UltraFeedback-like lengths, including a few pairs over max_length=1024 that notebook 02 must drop;
  * preemption: the first profile's runner is SIGKILLed (its whole process tree, the Jupyter kernel included) once
    `checkpoint-N` is complete; rerunning the same command resumes from that checkpoint and completes;
  * per notebook: wall seconds (papermill's own timing of the executed notebook, and the runner's) and peak GPU
    memory (nvidia-smi polled every 0.5 s), plus the run's metrics, in one JSON file.
The weights are random, so reward accuracies say nothing about ORPO; they must only be finite and present.

Steps: `build` makes model, tokenizer and data in the work folder (--work, default /tmp/gpu-check; ~20-40 s on an
H100, most of it writing the 14.5 GB checkpoint), then `series` runs the runner once per profile (--profiles) with
the parameters in SERIES_PARAMETERS below, and the result goes to --out (default
benchmarks/results/gpu_series_check.json), rewritten after every step (and into --mirror-dir, if given), so a run
stopped by a time limit still leaves what it measured. Exit status: 0 only if every profile passed its checks.

On the device tool (a bare H100 box, 10 minutes per call; build the wheels first with
`bash ../shared/tools/gpu-wheels.sh`), from the repo root:
    run(command="bash benchmarks/gpu_series_check.sh", carry=[".whl"], timeout_s=600)
The wrapper installs the carried wheels, runs this script with --deadline-s 570 (counted from the wrapper's start:
no profile or resume starts with less than MIN_PROFILE_S left, and a running one is stopped at the deadline, so the
JSON is always written) and --reuse-build, tees the log and writes the JSON into $OUT. If a profile was skipped or
stopped by the deadline, run the profiles in separate calls (`... gpu_series_check.sh --profiles t4`; the first
profile of each call is the one killed and resumed). Rerun this check whenever the GPU path changes (notebooks
01-05, helpers used on the GPU, pinned versions, profiles) and commit the JSON it writes.

On a CPU, `--small` builds a 2-layer, 64-wide model with the same 32,000-token tokenizer and shorter pairs (for
max_length 128), which lets `--build-only` and even `--profiles tiny` (the whole series, kill and resume included)
run in minutes as a smoke test of this script; those numbers mean nothing about the GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# ----------------------------------------------------------------------------------------------- what is run

# The runner's parameters for every profile (-p NAME VALUE); model_id / dataset_id are added (the built folders).
# Names are checked against helpers.profiles.RunConfig, and the values validated by resolve_config, before any work.
# n_validation (pairs carved from train for 04's in-training eval) is passed only where RunConfig has it.
SERIES_PARAMETERS = {"n_train": 480, "n_validation": 64, "n_eval": 100, "max_steps": 20, "eval_steps": 8,
                     "save_steps": 8, "logging_steps": 2}
OPTIONAL_PARAMETERS = {"n_validation"}  # dropped (and said so) when RunConfig lacks them
# Environment of every runner subprocess: no Hub (the device box has no network: fail fast instead of waiting on
# timeouts), unbuffered output (the kill watches it live); ORPO_OUTPUTS_DIR is added per run.
RUNNER_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
# Environment for one profile's runner subprocess only.
PROFILE_ENV = {"t4": {"ORPO_ASSUME_COMPUTE_CAPABILITY": "7.5"}}  # notebook 01 decides as on a T4 (cc 7.5)
# What notebook 01 must decide (environment.json's "precision") per profile; flash_attention_2 is also accepted
# for bf16 profiles when flash_attn is installed.
EXPECTED_PRECISION = {
    "h100": {"device": "cuda", "torch_dtype": "bfloat16", "bnb_4bit_compute_dtype": "bfloat16", "use_bf16": True},
    "a100": {"device": "cuda", "torch_dtype": "bfloat16", "bnb_4bit_compute_dtype": "bfloat16", "use_bf16": True},
    "t4": {"device": "cuda", "torch_dtype": "float16", "bnb_4bit_compute_dtype": "float16", "use_fp16": True,
           "attn_implementation": "sdpa"},
    "tiny": {"torch_dtype": "float32"},
}
# mistralai/Mistral-7B-v0.1's config.json (7.24B parameters).
MISTRAL_7B_CONFIG = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                         rope_theta=10000.0, sliding_window=4096, rms_norm_eps=1e-5, hidden_act="silu",
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         initializer_range=0.02)  # small init: activations of the random model stay finite
SMALL_CONFIG = dict(MISTRAL_7B_CONFIG, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # --small: CPU smoke test
VOCAB_SIZE = 32000
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Mistral; no pad token
MAX_SHARD_SIZE = "10GB"  # two safetensors shards, like mistralai/Mistral-7B-v0.1
MAX_LENGTH = {"full": 1024, "small": 128}  # the profiles' max_length (GPU profiles: 1024; tiny: 128)
NOTEBOOKS = ("01_environment", "02_data_preparation", "03_quantized_model", "04_orpo_training", "05_evaluation")
KILL_GRACE_S = 60  # after a kill: wait this long at most for the GPU memory to be released
MIN_PROFILE_S = 120  # with a deadline: don't start a profile (or a resume) with less time left than this
GIB, MIB = 2**30, 2**20
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "gpu_series_check.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- data text
# Text is built from a lexicon of pseudo-words (Zipf-distributed, as word frequencies are) mixed with English
# function words, in sentences and paragraphs; prompts open like instructions. A BPE tokenizer trained on it has
# UltraFeedback-like token counts per word, and nothing in it matches offline_default.tasks' checkable task families.

FUNCTION_WORDS = ("the of and to a in is that it for as with on be by this are or from at can which you your we not "
                  "an will how what when if but all more one has have was there their they its also so than into "
                  "each these may use used should would could about other some most such only then first two new "
                  "because over between both after before while where why who any many much very well").split()
OPENERS = ("Explain", "Describe", "Write a short essay about", "Summarize the following:", "Compare",
           "How can I", "What is the difference between", "Give three examples of", "Rewrite this paragraph:",
           "Answer the question:", "Write a story in which", "List the steps to", "Why does", "Translate into plain "
           "words:", "Draft an email about")
ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch",
          "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr")
NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "io")
CODAS = ("", "n", "r", "s", "l", "t", "m", "nd", "st")


class TextMaker:
    """Deterministic pseudo-text: `words(n)` gives n words in sentences and paragraphs."""

    def __init__(self, rng: random.Random, lexicon_size: int = 40000):
        self.rng = rng
        syllables = [o + n + c for o in ONSETS for n in NUCLEI for c in CODAS]
        seen, lexicon = set(FUNCTION_WORDS), []
        while len(lexicon) < lexicon_size:
            word = "".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
            if len(word) > 2 and word not in seen:
                seen.add(word)
                lexicon.append(word)
        self.lexicon = lexicon
        weights = [1.0 / (rank + 10) ** 1.05 for rank in range(len(lexicon))]
        total, acc, self.cum = sum(weights), 0.0, []
        for w in weights:
            acc += w / total
            self.cum.append(acc)

    def _word(self) -> str:
        if self.rng.random() < 0.4:
            return self.rng.choice(FUNCTION_WORDS)
        return self.rng.choices(self.lexicon, cum_weights=self.cum, k=1)[0]

    def words(self, n: int, list_items: bool = False) -> str:
        """About n words: sentences of 5-22 words, paragraphs of ~60 words (or '- ' list items)."""
        paragraphs, paragraph, count = [], [], 0
        while count < n:
            length = min(self.rng.randint(5, 22), n - count)
            sentence = [self._word() for _ in range(max(1, length))]
            if length > 8 and self.rng.random() < 0.3:
                sentence[self.rng.randrange(2, length - 2)] += ","
            paragraph.append(" ".join(sentence).capitalize() + ".")
            count += len(sentence)
            if sum(len(s.split()) for s in paragraph) > 60 or count >= n:
                paragraphs.append(("- " if list_items else "") + " ".join(paragraph))
                paragraph = []
        return ("\n" if list_items else "\n\n").join(paragraphs)

    def prompt(self, n: int) -> str:
        return f"{self.rng.choice(OPENERS)} {self.words(n).rstrip('.')}{self.rng.choice(('?', '.'))}"


def overlong_rows(rows: int, share: float) -> int:
    return max(2, round(share * rows))


def lognormal_words(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return int(min(high, max(low, rng.lognormvariate(math.log(median), sigma))))


def generate_pairs(maker: TextMaker, rng: random.Random, n: int, n_overlong: int, max_length: int,
                   seen_prompts: set, worst_case: bool = False) -> list[dict]:
    """Rows of prompt / chosen / rejected text. Word counts scale with max_length (1024: prompt median ~70 words,
    answers ~150-200, like UltraFeedback). The last `n_overlong` rows get an answer of 1.3 x max_length words, which
    is more than max_length tokens (every word is at least one token): notebook 02 must drop them.
    worst_case: every answer is longer than max_length allows, so `fit_rows` trims every regular pair to just under
    max_length: every batch is as long as a batch can be (the memory bound the h100 profile is sized for)."""
    scale = max_length / 1024
    rows = []
    while len(rows) < n:
        overlong = len(rows) >= n - n_overlong
        prompt = maker.prompt(lognormal_words(rng, 70 * scale, 0.7, 4, int(300 * scale) + 4))
        if prompt in seen_prompts:
            continue
        seen_prompts.add(prompt)
        chosen_n = lognormal_words(rng, 190 * scale, 0.55, 6, int(550 * scale) + 6)
        rejected_n = lognormal_words(rng, 150 * scale, 0.6, 4, int(550 * scale) + 4)
        if worst_case:
            chosen_n = rejected_n = max_length
        if overlong:
            chosen_n = int(1.3 * max_length)
        rows.append({"prompt": prompt, "chosen": maker.words(chosen_n, list_items=rng.random() < 0.15),
                     "rejected": maker.words(rejected_n, list_items=rng.random() < 0.15), "overlong": overlong})
    rng.shuffle(rows)
    return rows


# ----------------------------------------------------------------------------------------------- build


def train_tokenizer(texts: list[str], lexicon: list[str]):
    """Byte-level BPE with exactly VOCAB_SIZE entries, trained on the training conversations plus the lexicon
    (every word twice, so that each can become a token): enough distinct material for 31,741 merges. Wrapped like
    Mistral-7B-v0.1's tokenizer: <unk>=0, <s>=1, </s>=2, BOS added to every encoding, no EOS, no pad token, no chat
    template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    glossary = lexicon + lexicon[::-1]
    lines = [" ".join(glossary[i:i + 50]) for i in range(0, len(glossary), 50)]
    tok.train_from_iterator(texts + lines, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def pair_tokens(rows: list[dict], tokenizer) -> list[int]:
    """Prompt + longer answer, in tokens, as notebook 02 counts them: the series' chat template rendered once
    (BOS and EOS included), so the measure matches its `pair_tokens` and max_length filter."""
    from helpers.chat import CHAT_TEMPLATE

    def render(row, answer):
        return tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": row[answer]}],
                                             chat_template=CHAT_TEMPLATE, tokenize=False)

    texts = [render(row, answer) for row in rows for answer in ("chosen", "rejected")]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [max(lengths[2 * i], lengths[2 * i + 1]) for i in range(len(rows))]


def fit_rows(rows: list[dict], tokenizer, max_length: int) -> tuple[list[int], int]:
    """Trim the answers of regular rows that came out longer than max_length tokens (cut words at the end, as
    a shorter answer); overlong rows are checked to really be overlong. Returns (pair tokens, rows trimmed)."""
    lengths = pair_tokens(rows, tokenizer)
    trimmed: set[int] = set()
    for _ in range(8):
        too_long = [i for i, (row, n) in enumerate(zip(rows, lengths)) if not row["overlong"] and n > max_length]
        if not too_long:
            break
        trimmed.update(too_long)
        for i in too_long:
            for answer in ("chosen", "rejected"):
                words = rows[i][answer].split(" ")
                keep = max(3, int(len(words) * max_length / lengths[i] * 0.95))
                rows[i][answer] = " ".join(words[:keep]).rstrip(",.") + "."
        lengths = pair_tokens(rows, tokenizer)
    bad = [n for row, n in zip(rows, lengths) if row["overlong"] == (n <= max_length)]
    if bad:
        raise RuntimeError(f"{len(bad)} rows are on the wrong side of max_length={max_length} after trimming")
    return lengths, len(trimmed)


def ultrafeedback_rows(rows: list[dict], rng: random.Random) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized's schema: prompt, prompt_id, chosen, rejected, messages, scores."""
    out = []
    for row in rows:
        user = {"role": "user", "content": row["prompt"]}
        chosen = [user, {"role": "assistant", "content": row["chosen"]}]
        score = rng.choice((6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0))
        out.append({"prompt": row["prompt"], "prompt_id": hashlib.sha256(row["prompt"].encode()).hexdigest(),
                    "chosen": chosen, "rejected": [user, {"role": "assistant", "content": row["rejected"]}],
                    "messages": chosen, "score_chosen": score,
                    "score_rejected": max(1.0, score - rng.choice((0.5, 1.0, 1.5, 2.0, 3.0, 4.0)))})
    return out


def ultrafeedback_features():
    from datasets import Features, List, Value

    messages = List({"content": Value("string"), "role": Value("string")})
    return Features({"prompt": Value("string"), "prompt_id": Value("string"), "chosen": messages,
                     "rejected": messages, "messages": messages, "score_chosen": Value("float64"),
                     "score_rejected": Value("float64")})


def length_stats(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {"min": ordered[0], "median": int(statistics.median(ordered)),
            "p90": ordered[int(0.9 * (len(ordered) - 1))], "max": ordered[-1]}


def build_model(path: Path, config: dict, seed: int) -> dict:
    """Random-weight MistralForCausalLM built directly on the GPU in bf16 (CPU: float32), one forward pass checked
    for finite logits, saved with save_pretrained (safetensors, sharded)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    seconds = {}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device):
        model = MistralForCausalLM._from_config(MistralConfig(**config), dtype=dtype)
    model.eval()
    if cuda:
        torch.cuda.synchronize()
    seconds["model_build"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    with torch.no_grad():
        ids = torch.randint(3, config["vocab_size"], (1, 64), device=device)
        logits = model(input_ids=ids).logits.float()
    finite = bool(torch.isfinite(logits).all())
    logit_std = round(float(logits.std()), 4)
    seconds["model_forward_check"] = round(time.perf_counter() - t0, 2)
    if not finite:
        raise RuntimeError("the random model's logits are not finite: lower initializer_range")
    t0 = time.perf_counter()
    model.save_pretrained(path, max_shard_size=MAX_SHARD_SIZE)
    seconds["model_save"] = round(time.perf_counter() - t0, 2)
    info = {"device": device, "dtype": str(dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in model.parameters()), "config": config,
            "logits_finite": finite, "logit_std": logit_std,
            "files": {f.name: round(f.stat().st_size / GIB, 3) for f in sorted(path.glob("*.safetensors"))},
            "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None}
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"seconds": seconds, "model": info}


def build(work: Path, small: bool, train_rows: int, test_rows: int, overlong_share: float, seed: int,
          worst_case: bool = False) -> dict:
    """Model (work/model, with the tokenizer beside it as in a Hub repo) and data (work/data). Returns build_info,
    also written to work/build_info.json."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    max_length = MAX_LENGTH["small" if small else "full"]
    model_dir, data_dir = work / "model", work / "data"
    for folder in (model_dir, data_dir):
        shutil.rmtree(folder, ignore_errors=True)
    model_dir.mkdir(parents=True)
    rng = random.Random(seed)
    seconds = {}

    t0 = time.perf_counter()
    maker = TextMaker(rng)
    n_over = {"train": overlong_rows(train_rows, overlong_share), "test": overlong_rows(test_rows, overlong_share)}
    seen: set = set()
    split_rows = {split: generate_pairs(maker, rng, n, n_over[split], max_length, seen, worst_case)
                  for split, n in (("train", train_rows), ("test", test_rows))}
    seconds["data_generate"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    texts = [f"### User:\n{r['prompt']}\n\n### Assistant:\n{r[a]}" for r in split_rows["train"]
             for a in ("chosen", "rejected")]
    tokenizer = train_tokenizer(texts, maker.lexicon)
    seconds["tokenizer_train"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    data_info = {}
    for split, rows in split_rows.items():
        lengths, trimmed = fit_rows(rows, tokenizer, max_length)
        regular = [n for r, n in zip(rows, lengths) if not r["overlong"]]
        data_info[f"{split}_prefs"] = {"rows": len(rows), "overlong_rows": n_over[split], "trimmed_rows": trimmed,
                                       "pair_tokens_regular": length_stats(regular),
                                       "pair_tokens_overlong": length_stats([n for r, n in zip(rows, lengths)
                                                                             if r["overlong"]])}
    seconds["data_measure"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    features = ultrafeedback_features()
    dataset = datasets.DatasetDict({f"{split}_prefs": datasets.Dataset.from_list(ultrafeedback_rows(rows, rng),
                                                                                 features=features)
                                    for split, rows in split_rows.items()})
    dataset.save_to_disk(str(data_dir))
    tokenizer.save_pretrained(model_dir)
    seconds["data_and_tokenizer_save"] = round(time.perf_counter() - t0, 2)

    model_info = build_model(model_dir, SMALL_CONFIG if small else MISTRAL_7B_CONFIG, seed)
    seconds.update(model_info["seconds"])

    t0 = time.perf_counter()
    verified = verify(model_dir, data_dir)
    seconds["verify"] = round(time.perf_counter() - t0, 2)
    seconds["total"] = round(time.perf_counter() - started, 2)
    info = {"work": str(work), "model_dir": str(model_dir), "data_dir": str(data_dir), "small": small,
            "max_length": max_length, "seed": seed, "seconds": seconds, "model": model_info["model"],
            "data": data_info, "verified": verified, "key": build_key(small, train_rows, test_rows, overlong_share,
                                                                      seed, worst_case), "worst_case": worst_case}
    (work / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def build_key(small: bool, train_rows: int, test_rows: int, overlong_share: float, seed: int,
              worst_case: bool = False) -> str:
    """Identifies a build: this script's source and the build options (see --reuse-build)."""
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{source}:{small}:{train_rows}:{test_rows}:{overlong_share}:{seed}" + (":worst" if worst_case else "")


def reusable(args) -> bool:
    info = read_json_file(args.work / "build_info.json") or {}
    same = info.get("key") == build_key(args.small, args.train_rows, args.test_rows, args.overlong_share, args.seed,
                                        args.worst_case)
    return same and Path(info.get("model_dir", "/nonexistent"), "config.json").exists()


def verify(model_dir: Path, data_dir: Path) -> dict:
    """Reload what was saved, the way notebooks 02-03 load it, and check the properties this check relies on."""
    import datasets
    from transformers import AutoConfig, AutoTokenizer

    from offline_default.tasks import task_of

    tok = AutoTokenizer.from_pretrained(model_dir)
    data = datasets.load_from_disk(str(data_dir))
    config = AutoConfig.from_pretrained(model_dir)
    columns = ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"]
    prompts = [p for split in data.values() for p in split["prompt"]]
    first = data["train_prefs"][0]
    out = {
        "tokenizer_class": type(tok).__name__, "tokenizer_len": len(tok), "vocab_size": tok.vocab_size,
        "special_ids": {"unk": tok.unk_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id},
        "pad_token": tok.pad_token, "chat_template": tok.chat_template,
        "adds_bos": tok("hello world")["input_ids"][0] == tok.bos_token_id,
        "splits": {name: len(split) for name, split in data.items()},
        "columns": {name: split.column_names for name, split in data.items()},
        "distinct_prompts": len(set(prompts)) == len(prompts),
        "checkable_task_prompts": sum(task_of(p) is not None for p in prompts),
        "config_vocab_size": config.vocab_size,
    }
    problems = []
    if out["tokenizer_len"] != VOCAB_SIZE or out["vocab_size"] != VOCAB_SIZE:
        problems.append(f"tokenizer has {out['tokenizer_len']} tokens, not {VOCAB_SIZE}")
    if out["special_ids"] != {"unk": 0, "bos": 1, "eos": 2}:
        problems.append(f"special token ids {out['special_ids']}")
    if out["chat_template"] is not None or out["pad_token"] is not None:
        problems.append("the tokenizer must have no chat template and no pad token (as Mistral-7B-v0.1)")
    if not out["adds_bos"]:
        problems.append("the tokenizer does not add BOS")
    if sorted(data) != ["test_prefs", "train_prefs"] or any(data[s].column_names != columns for s in data):
        problems.append(f"splits/columns {out['columns']}")
    if [m["role"] for m in first["chosen"]] != ["user", "assistant"] or first["messages"] != first["chosen"]:
        problems.append("chosen must be [user, assistant] messages and messages == chosen")
    if not out["distinct_prompts"]:
        problems.append("prompts are not distinct")
    if config.vocab_size != VOCAB_SIZE:
        problems.append(f"model vocab {config.vocab_size}")
    if problems:
        raise RuntimeError("build verification failed: " + "; ".join(problems))
    return out


# ----------------------------------------------------------------------------------------------- GPU memory


def nvidia_smi(query: str) -> list[str] | None:
    """One value list per GPU from `nvidia-smi --query-gpu=...`, or None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else None


def gpu_memory_used_mib() -> int | None:
    lines = nvidia_smi("memory.used")
    return int(lines[0]) if lines else None


class MemoryPoller(threading.Thread):
    """Polls the first GPU's memory.used every 0.5 s and keeps the maximum per label (the running notebook)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.label, self.peaks = interval, "startup", {}
        self.stop_event, self.lock = threading.Event(), threading.Lock()
        self.available = gpu_memory_used_mib() is not None

    def run(self):
        while self.available and not self.stop_event.is_set():
            used = gpu_memory_used_mib()
            if used is not None:
                with self.lock:
                    self.peaks[self.label] = max(used, self.peaks.get(self.label, 0))
            self.stop_event.wait(self.interval)

    def stop(self) -> dict:
        self.stop_event.set()
        self.join(timeout=15)
        with self.lock:
            return dict(self.peaks) if self.available else {}


# ----------------------------------------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    """All descendant pids of `pid` (from /proc), children before grandchildren. The Jupyter kernel papermill
    starts runs in a session of its own, so killing the runner's process group alone would leave it running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL the runner's process group and every descendant (as a preemption would). Returns how many."""
    victims = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session: its pgid is its pid
    except ProcessLookupError:
        pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    return 1 + len(victims)


def wait_gpu_released(baseline_mib: int | None, limit_s: float = KILL_GRACE_S) -> float | None:
    """Seconds until the GPU's used memory is back near `baseline_mib` (None without nvidia-smi)."""
    if baseline_mib is None:
        return None
    t0 = time.time()
    while time.time() - t0 < limit_s:
        used = gpu_memory_used_mib()
        if used is not None and used <= baseline_mib + 512:
            return round(time.time() - t0, 1)
        time.sleep(0.5)
    return None


class Deadline:
    """An absolute wall-clock limit (seconds after $GPU_CHECK_STARTED, the wrapper's start, else this script's)."""

    def __init__(self, seconds: float | None):
        start = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
        self.at = start + seconds if seconds else None

    def left(self) -> float:
        return math.inf if self.at is None else self.at - time.time()


STARTED_RE = re.compile(r"^=== (\d\d_\w+) ===$")
DONE_RE = re.compile(r"^=== (\d\d_\w+) done in (\d+) s ===$")
SKIPPED_RE = re.compile(r"^=== (\d\d_\w+): already done")  # a resumed run skips stages finished before the kill


def run_attempt(cmd: list[str], env: dict, log_path: Path, deadline: Deadline, kill_when: Path | None = None) -> dict:
    """Run the runner once, streaming its output here and into log_path. With kill_when: SIGKILL the whole process
    tree as soon as that file (a checkpoint's trainer_state.json) exists and is complete JSON."""
    baseline = gpu_memory_used_mib()
    poller = MemoryPoller()
    poller.start()
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    lines: list[str] = []
    runner_seconds: dict[str, int | str] = {}

    def read():
        with log_path.open("w") as sink:
            for line in proc.stdout:
                sys.stdout.write(line)
                sink.write(line)
                sink.flush()
                lines.append(line.rstrip("\n"))
                if m := STARTED_RE.match(lines[-1]):
                    poller.label = m.group(1)
                elif m := DONE_RE.match(lines[-1]):
                    runner_seconds[m.group(1)] = int(m.group(2))
                    poller.label = f"after_{m.group(1)}"
                elif m := SKIPPED_RE.match(lines[-1]):
                    runner_seconds[m.group(1)] = "skipped (already done)"

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed = stopped_by_deadline = False
    killed_after_s = processes_killed = None
    while proc.poll() is None:
        if kill_when is not None and checkpoint_complete(kill_when):
            killed_after_s = round(time.time() - started, 1)
            processes_killed = kill_tree(proc)
            killed = True
            log(f"SIGKILLed the runner's process tree ({processes_killed} processes) at {kill_when.parent.name}")
            break
        if deadline.left() <= 0:
            processes_killed = kill_tree(proc)
            stopped_by_deadline = True
            log("deadline reached: stopped the runner")
            break
        time.sleep(0.25)
    reader.join(timeout=30)
    released_s = wait_gpu_released(baseline) if killed else None  # the resume must not find the GPU still full
    peaks = poller.stop()
    return {"returncode": proc.returncode, "seconds": round(time.time() - started, 1), "killed": killed,
            "killed_after_s": killed_after_s, "processes_killed": processes_killed,
            "stopped_by_deadline": stopped_by_deadline, "gpu_released_after_kill_s": released_s,
            "gpu_memory_baseline_MiB": baseline, "runner_notebook_seconds": runner_seconds,
            "peak_gpu_memory_MiB": peaks, "log": str(log_path), "output": lines}


def checkpoint_complete(state_file: Path) -> bool:
    """trainer_state.json is the last file the Trainer writes into a checkpoint; complete once it parses."""
    try:
        json.loads(state_file.read_text())
        return True
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- series


def series_parameters() -> dict:
    """SERIES_PARAMETERS as this checkout's RunConfig knows them: optional names it lacks are dropped (and said);
    any other unknown name stops the check before any work."""
    from dataclasses import fields

    from helpers.profiles import RunConfig

    known = {f.name for f in fields(RunConfig)}
    dropped = sorted((set(SERIES_PARAMETERS) - known) & OPTIONAL_PARAMETERS)
    if dropped:
        log(f"RunConfig has no {dropped}: not passed to the runner")
    unknown = sorted(set(SERIES_PARAMETERS) - known - OPTIONAL_PARAMETERS)
    if unknown:
        raise SystemExit(f"SERIES_PARAMETERS names {unknown}, which helpers.profiles.RunConfig does not have "
                         f"(known: {sorted(known)}). Update SERIES_PARAMETERS at the top of {Path(__file__).name}.")
    return {k: v for k, v in SERIES_PARAMETERS.items() if k in known}


def runner_parameters(build_info: dict, params: dict) -> dict:
    return {"model_id": build_info["model_dir"], "dataset_id": build_info["data_dir"], **params}


def check_parameters(profiles: list[str], params: dict, args) -> None:
    """Fail before any GPU work if a profile is unknown, a value does not validate or the data would be too small."""
    from helpers.profiles import PROFILES, resolve_config

    for profile in profiles:
        if profile not in PROFILES:
            raise SystemExit(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
        resolve_config(profile, runner_parameters({"model_dir": "model", "data_dir": "data"},
                                                  {**params, **profile_parameters(args, profile)}))
    regular_train = args.train_rows - overlong_rows(args.train_rows, args.overlong_share)
    regular_test = args.test_rows - overlong_rows(args.test_rows, args.overlong_share)
    need = params["n_train"] + params.get("n_validation", 0)
    if regular_train < need + 8 or regular_test < params["n_eval"]:
        raise SystemExit(f"--train-rows {args.train_rows} / --test-rows {args.test_rows} leave {regular_train} / "
                         f"{regular_test} pairs within max_length: notebook 02 needs n_train + n_validation = {need} "
                         f"(plus a margin of 8, validation is carved by prompt) and n_eval = {params['n_eval']}")
    if args.kill_at_step and (args.kill_at_step % params["save_steps"] or args.kill_at_step >= params["max_steps"]):
        raise SystemExit(f"--kill-at-step {args.kill_at_step}: must be a multiple of save_steps "
                         f"({params['save_steps']}) below max_steps ({params['max_steps']}), or that checkpoint never "
                         "appears before the run ends")


def profile_parameters(args, profile: str) -> dict:
    """The --param PROFILE:NAME=VALUE values for `profile` (validated with the rest by check_parameters)."""
    out = {}
    for item in getattr(args, "param", None) or []:
        target, _, assignment = item.partition(":")
        name, _, value = assignment.partition("=")
        if not (target and name and value):
            raise SystemExit(f"--param {item!r}: expected PROFILE:NAME=VALUE, e.g. h100:num_processes=2")
        if target == profile:
            out[name] = value
    return out


def runner_command(profile: str, run_name: str, params: dict) -> list[str]:
    """`-p NAME VALUE` with str(value): ints and paths read back the same under YAML and papermill's rules."""
    cmd = [sys.executable, "-m", "runner", "--profile", profile, "--run-name", run_name]
    for name, value in params.items():
        cmd += ["-p", name, str(value)]
    return cmd


def command_line(profile: str, cmd: list[str]) -> str:
    """The runner command as one shell line, with the profile's environment (ORPO_OUTPUTS_DIR aside)."""
    env = "".join(f"{k}={v} " for k, v in PROFILE_ENV.get(profile, {}).items())
    return env + subprocess.list2cmdline(["python"] + cmd[1:])


def read_json_file(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_outputs(run_dir: Path) -> dict:
    """What the run wrote, for the result file."""
    out: dict = {}
    for name in NOTEBOOKS:
        nb = read_json_file(run_dir / "notebooks" / f"{name}.ipynb")
        pm = (nb or {}).get("metadata", {}).get("papermill", {})
        out.setdefault("papermill", {})[name] = {"seconds": round(pm["duration"], 1) if pm.get("duration") else None,
                                                 "exception": pm.get("exception")}
    env = read_json_file(run_dir / "environment.json") or {}
    out["precision"] = env.get("precision")
    out["device_name"] = (env.get("hardware") or {}).get("device_name")
    out["eval"] = read_json_file(run_dir / "eval.json")
    if out["eval"] and out["eval"].get("examples"):
        first = out["eval"]["examples"][0]
        out["eval"] = {**out["eval"], "examples": len(out["eval"]["examples"]),
                       "first_example": {k: str(v)[:200] for k, v in first.items()}}
    out["train_summary"] = read_json_file(run_dir / "train_summary.json")
    out["data_report"] = read_json_file(run_dir / "data_report.json")
    records = []
    if (run_dir / "metrics.jsonl").exists():
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out["eval_records"] = [r for r in records if any(k.startswith("eval_") for k in r)]
    out["eval_steps_seen"] = [r.get("step") for r in out["eval_records"]]
    out["train_log_steps"] = sorted({r["step"] for r in records if "loss" in r})
    out["final_step"] = max((r.get("step", 0) for r in records), default=None)
    report = run_dir / "report.md"
    out["report_head"] = report.read_text().splitlines()[:30] if report.exists() else None
    out["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    return out


def overlong_dropped(report: dict) -> dict:
    """Pairs notebook 02 dropped as longer than max_length, per split, from data_report.json (either layout:
    {"train": {"dropped_too_long": n}, ...} or {"too_long": {"train": {"dropped": n}, ...}})."""
    if isinstance(report.get("too_long"), dict):
        return {k: v.get("dropped", 0) for k, v in report["too_long"].items() if isinstance(v, dict)}
    return {k: v["dropped_too_long"] for k, v in report.items() if isinstance(v, dict) and "dropped_too_long" in v}


def expected_precision_ok(profile: str, precision: dict | None) -> bool:
    want = EXPECTED_PRECISION.get(profile)
    if not precision or want is None:
        return bool(precision)
    return all(precision.get(k) == v for k, v in want.items())


def expected_series(series_parameters: dict, extra: dict) -> dict:
    """What a run was asked for: a --param max_steps=12 (or eval_steps, save_steps) moves the expected last step,
    evaluations and checkpoints too."""
    return {**series_parameters,
            **{k: int(v) for k, v in extra.items() if k in ("max_steps", "eval_steps", "save_steps")}}


def judge(record: dict, profile: str, series: dict, extra: dict, kill_step: int, final_output: list[str],
          notebook04_text: str) -> dict:
    """The checks of one profile's run (True = as expected), from its record, the rerun's output lines and notebook
    04's executed text; sets record["overlong_dropped"] and record["kill_resume"]. `series`: the parameters this run
    was asked for; `extra`: its --param values (num_processes, distributed)."""
    fsdp = extra.get("distributed", "").lower() == "fsdp"
    checks = {"completed": record["completed"], "precision_as_expected": expected_precision_ok(profile,
                                                                                            record["precision"])}
    if record["completed"]:
        report = record["data_report"] or {}
        every = set(range(series["eval_steps"], series["max_steps"] + 1, series["eval_steps"]))
        seen = set(record["eval_steps_seen"])
        summary = record["train_summary"] or {}
        record["overlong_dropped"] = dropped = overlong_dropped(report)
        train_dropped = dropped.get("train", 0)  # and the test split's few overlong pairs too
        checks["overlong_pairs_dropped"] = train_dropped > 0 and sum(dropped.values()) > train_dropped
        # every eval_steps-th step, and the Trainer also evaluates after the last step
        checks["in_training_evals_at_expected_steps"] = every <= seen <= every | {series["max_steps"]}
        checks["reached_max_steps"] = summary.get("global_step") == series["max_steps"]
        checks["train_loss_finite"] = math.isfinite(summary.get("train_loss", math.nan))
        processes = int(extra.get("num_processes", 1))
        if processes > 1:  # N processes trained; under DDP they end with identical LoRA weights
            checks["trained_on_all_processes"] = summary.get("processes") == processes
            if not fsdp:  # FSDP shards the weights: there are no replicas to compare
                checks["replicas_identical"] = f"identical in all {processes} processes" in notebook04_text
        checks["eval_metrics_finite"] = all(math.isfinite(record["eval"][m]["reward_accuracy"])
                                            for m in ("base", "tuned"))
        # an empty or unloaded adapter scores exactly like the base model (what the first FSDP run did)
        checks["adapter_changed_the_model"] = any(record["eval"]["tuned"].get(k) != record["eval"]["base"].get(k)
                                                  for k in ("mean_chosen_logp", "mean_rejected_logp", "mean_margin"))
    if kill_step:
        first = record["attempts"][0]
        resumed_lines = [line.strip() for line in final_output if "Resuming from checkpoint-" in line]
        resume = {"killed": first["killed"], "killed_after_s": first["killed_after_s"],
                  "processes_killed": first["processes_killed"],
                  "gpu_released_after_kill_s": first["gpu_released_after_kill_s"],
                  "rerun": len(record["attempts"]) > 1, "resume_lines": resumed_lines,
                  "steps_trained_after_resume": (record["train_summary"] or {}).get("steps")}
        resume["resumed"] = resume["rerun"] and any(f"checkpoint-{kill_step}" in l for l in resumed_lines)
        # FSDP's sharded checkpoints are not resumed (a documented limit): the rerun must say so and train
        # every step again, rather than load a half-compatible state
        resume["restart_announced"] = any(f"Not resuming from checkpoint-{kill_step}: an FSDP sharded" in line
                                          for line in final_output)
        record["kill_resume"] = resume
        checks["killed_at_checkpoint"] = resume["killed"]
        if fsdp:
            checks["fsdp_restart_announced"] = resume["rerun"] and resume["restart_announced"]
        else:
            checks["resumed_from_checkpoint"] = resume["resumed"]
        if record["completed"]:
            checks["trained_only_remaining_steps" if not fsdp else "trained_all_steps_again"] = (
                resume["steps_trained_after_resume"] == series["max_steps"] - (0 if fsdp else kill_step))
    return checks


def rejudge(result_path: Path, log_path: Path) -> int:
    """Apply today's checks to a saved result (its JSON and the .log the wrapper wrote beside it): the log stands in
    for the rerun's output and notebook 04's text. Prints each profile's checks; writes nothing."""
    import ast

    missing = [str(f) for f in (result_path, log_path) if not f.is_file()]
    if missing:  # the log stands in for the rerun's output: without it the resume checks cannot be judged
        raise SystemExit(f"--rejudge: {', '.join(missing)} not found (a result is judged with its .log; "
                         "--rejudge-log names another)")
    result = json.loads(result_path.read_text())
    lines = log_path.read_text().splitlines()
    params = ast.literal_eval(result["options"].get("param", "[]"))
    ok = True
    for profile, record in result["profiles"].items():
        extra = profile_parameters(argparse.Namespace(param=params), profile)
        series = expected_series(result["series_parameters"], extra)
        checks = judge(record, profile, series, extra, record.get("kill_at_step") or 0, lines, "\n".join(lines))
        passed = all(checks.values())
        ok &= passed
        print(f"{profile}: {'PASSED' if passed else 'FAILED'} {json.dumps(checks)}")
    return 0 if ok else 1


def run_profile(profile: str, args, build_info: dict, kill_step: int, deadline: Deadline) -> dict:
    """One profile: (kill + resume, or one run), then its outputs and checks."""
    run_name = f"gpu-{profile}"
    outputs_dir = args.work / "outputs"
    run_dir = outputs_dir / run_name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time (the work folder is scratch)
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    extra = profile_parameters(args, profile)  # --param PROFILE:NAME=VALUE, e.g. h100:num_processes=2
    series = expected_series(args.series_parameters, extra)
    params = runner_parameters(build_info, {**args.series_parameters, **extra})
    cmd = runner_command(profile, run_name, params)
    extra_env = {"ORPO_OUTPUTS_DIR": str(outputs_dir), **RUNNER_ENV, **PROFILE_ENV.get(profile, {})}
    env = {**os.environ, **extra_env}
    record = {"profile": profile, "run_name": run_name, "expected": series, "run_dir": str(run_dir),
              "env": extra_env, "command": cmd, "command_line": command_line(profile, cmd),
              "kill_at_step": kill_step or None, "attempts": []}
    log(f"profile {profile}: {record['command_line']}")
    kill_file = run_dir / "checkpoints" / f"checkpoint-{kill_step}" / "trainer_state.json" if kill_step else None
    attempt = run_attempt(cmd, env, args.work / "logs" / f"{run_name}-1.log", deadline, kill_file)
    record["attempts"].append(attempt)
    if attempt["killed"]:
        if deadline.left() < MIN_PROFILE_S:
            record["skipped_resume"] = f"only {deadline.left():.0f} s left before the deadline"
        else:
            log(f"profile {profile}: rerunning the same command, which must resume from checkpoint-{kill_step}")
            record["attempts"].append(run_attempt(cmd, env, args.work / "logs" / f"{run_name}-2.log", deadline))
    final = record["attempts"][-1]
    record.update(run_outputs(run_dir))
    record["notebooks"] = {}
    for name in NOTEBOOKS:
        peaks = [a["peak_gpu_memory_MiB"].get(name) for a in record["attempts"]]
        peaks = [p for p in peaks if p is not None]
        record["notebooks"][name] = {
            "seconds": record["papermill"][name]["seconds"],  # papermill's timing of its last execution
            "runner_seconds": [a["runner_notebook_seconds"].get(name) for a in record["attempts"]],
            "peak_gpu_memory_MiB": max(peaks) if peaks else None}
    record["completed"] = final["returncode"] == 0 and record["eval"] is not None
    notebook04 = run_dir / "notebooks" / "04_orpo_training.ipynb"
    checks = judge(record, profile, series, extra, kill_step, final["output"],
                   notebook04.read_text() if notebook04.exists() else "")
    record["checks"] = checks
    record["passed"] = all(checks.values())
    if not record["passed"]:
        record["log_tail"] = final["output"][-80:]
    for a in record["attempts"]:
        a.pop("output")
    train = record["train_summary"] or {}
    record["peak_gpu_memory_GiB_train_summary"] = train.get("peak_gpu_memory_GiB")
    record["peak_gpu_reserved_GiB_train_summary"] = train.get("peak_gpu_reserved_GiB")  # torch's cache, training
    log(f"profile {profile}: {'PASSED' if record['passed'] else 'FAILED'} "
        f"{ {k: v for k, v in checks.items() if not v} or ''}")
    return record


# ----------------------------------------------------------------------------------------------- result


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers",
                 "liger-kernel", "papermill", "flash-attn"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> dict | None:
    lines = nvidia_smi("name,memory.total,driver_version")
    if not lines:
        return None
    name, total, driver = [x.strip() for x in lines[0].split(",")]
    return {"name": name, "memory_total_MiB": int(total), "driver": driver, "count": len(lines)}


def write_result(result: dict, args) -> None:
    text = json.dumps(result, indent=2, default=str) + "\n"
    targets = [args.out] + ([Path(args.mirror_dir) / args.out.name] if args.mirror_dir else [])
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def print_summary(result: dict) -> None:
    b = result.get("build") or {}
    if b:
        s = b["seconds"]
        d = b["data"]["train_prefs"]["pair_tokens_regular"]
        print(f"\nbuild: {s['total']:.0f} s (tokenizer {s['tokenizer_train']} s, model build {s['model_build']} s, "
              f"save {s['model_save']} s); vocab {b['verified']['tokenizer_len']}, train pair tokens median "
              f"{d.get('median')} / max {d.get('max')}")
    profiles = result.get("profiles") or {}
    if not profiles:
        return
    short = [n[:2] for n in NOTEBOOKS]
    print(f"\n{'profile':<8}{'passed':<8}" + "".join(f"{n + ' s':>7}" for n in short)
          + "".join(f"{n + ' GiB':>8}" for n in short) + f"{'train GiB':>10}  {'kill/resume':<16}"
          + f"{'reward acc base->tuned':<24}evals at")
    for name, p in profiles.items():
        if "skipped" in p:
            print(f"{name:<8}skipped: {p['skipped']}")
            continue
        nbs = p["notebooks"]
        secs = "".join(f"{nbs[n]['seconds'] if nbs[n]['seconds'] is not None else '-':>7}" for n in NOTEBOOKS)
        mems = "".join(f"{nbs[n]['peak_gpu_memory_MiB'] * MIB / GIB:>8.1f}" if nbs[n]["peak_gpu_memory_MiB"]
                       else f"{'-':>8}" for n in NOTEBOOKS)
        kr = p.get("kill_resume")
        kr_text = ("-" if not kr else f"step {p['kill_at_step']}: " + ("resumed" if kr["resumed"] else "NO"))
        ev = p.get("eval") or {}
        acc = (f"{ev['base']['reward_accuracy']:.3f} -> {ev['tuned']['reward_accuracy']:.3f}" if ev else "-")
        print(f"{name:<8}{'yes' if p['passed'] else 'NO':<8}{secs}{mems}"
              f"{p.get('peak_gpu_memory_GiB_train_summary') or '-':>10}  {kr_text:<16}{acc:<24}"
              f"{p.get('eval_steps_seen')}")
    print("(s: papermill's timing of each notebook's last execution; GiB: nvidia-smi peak, all attempts)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-check"), help="work folder (default %(default)s)")
    parser.add_argument("--out", type=Path, help="result JSON (default: benchmarks/results/gpu_series_check.json; "
                        "with --small: <work>/gpu_series_check.json, so a smoke test never replaces a GPU result)")
    parser.add_argument("--mirror-dir", help="also write the result JSON into this folder (the wrapper: $OUT)")
    parser.add_argument("--profiles", default="h100,t4", help="comma-separated runner profiles (default %(default)s)")
    parser.add_argument("--build-only", action="store_true", help="build model, tokenizer and data, then stop")
    parser.add_argument("--skip-build", action="store_true", help="use the build in --work as it is")
    parser.add_argument("--reuse-build", action=argparse.BooleanOptionalAction, default=False,
                        help="use the build in --work if it was made by this same script with the same options "
                             "(a warm device machine keeps /tmp), else build")
    parser.add_argument("--small", action="store_true", help="tiny model and short pairs: a CPU smoke test")
    parser.add_argument("--worst-case", action="store_true", help="every pair just under max_length: the longest "
                        "batches the data can form, the memory bound (use its own --work)")
    parser.add_argument("--train-rows", type=int, default=600, help="train_prefs rows (default %(default)s)")
    parser.add_argument("--test-rows", type=int, default=150, help="test_prefs rows (default %(default)s)")
    parser.add_argument("--overlong-share", type=float, default=0.02,
                        help="share of rows longer than max_length, at least 2 per split (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-at-step", type=int, default=SERIES_PARAMETERS["save_steps"],
                        help="SIGKILL the runner once checkpoint-N is complete, then rerun (0 = off; default "
                             "%(default)s, must be a multiple of save_steps)")
    parser.add_argument("--param", action="append", default=[], metavar="PROFILE:NAME=VALUE",
                        help="an extra runner parameter for one profile, e.g. h100:num_processes=2 (repeatable)")
    parser.add_argument("--kill-profiles", help="profiles to kill and resume (default: the first of --profiles)")
    parser.add_argument("--deadline-s", type=float, default=0,
                        help="stop starting and running work this many seconds after $GPU_CHECK_STARTED (or this "
                             "script's start), so the result is written before an outer limit (0 = none)")
    parser.add_argument("--rejudge", type=Path, metavar="RESULT_JSON", help="apply this script's checks to a saved "
                        "result and its .log (beside it, or --rejudge-log), print them, and stop (no GPU)")
    parser.add_argument("--rejudge-log", type=Path, help="the saved result's log (default: RESULT_JSON with .log)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rejudge:
        return rejudge(args.rejudge, args.rejudge_log or args.rejudge.with_suffix(".log"))
    args.work = args.work.resolve()
    args.out = (args.out or (args.work / "gpu_series_check.json" if args.small else DEFAULT_OUT)).resolve()
    profiles = [p for p in args.profiles.split(",") if p]
    kill_profiles = args.kill_profiles.split(",") if args.kill_profiles is not None else profiles[:1]
    deadline = Deadline(args.deadline_s)
    started = time.time()
    result = {"check": "gpu_series_check", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "gpu": gpu_info(), "versions": versions(), "options": {k: str(v) for k, v in vars(args).items()},
              "series_parameters": None, "build": None, "profiles": {}}
    if not args.build_only:
        args.series_parameters = result["series_parameters"] = series_parameters()
        check_parameters(profiles, args.series_parameters, args)
    args.work.mkdir(parents=True, exist_ok=True)

    if args.build_only:
        log(f"build in {args.work} ({'small' if args.small else 'Mistral-7B-v0.1 config'})")
        result["build"] = build(args.work, args.small, args.train_rows, args.test_rows, args.overlong_share,
                                args.seed, args.worst_case)
    elif args.skip_build or args.reuse_build and reusable(args):
        result["build"] = read_json_file(args.work / "build_info.json")
        if result["build"] is None:
            raise SystemExit(f"--skip-build: no build_info.json in {args.work}")
        log(f"reusing the build in {args.work}")
    else:  # in a child process, so this one never holds a CUDA context (nvidia-smi then sees the notebooks only)
        log(f"build in {args.work} (subprocess)")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--build-only", "--work", str(args.work),
               "--out", str(args.work / "build_result.json"), "--train-rows", str(args.train_rows),
               "--test-rows", str(args.test_rows), "--overlong-share", str(args.overlong_share),
               "--seed", str(args.seed)] + (["--small"] if args.small else []) + (
                   ["--worst-case"] if args.worst_case else [])
        rc = subprocess.run(cmd, cwd=REPO_ROOT).returncode
        result["build"] = read_json_file(args.work / "build_info.json") if rc == 0 else None
        if result["build"] is None:
            result["build_failed"] = f"build exited with {rc}"
    if result["build"] is not None:
        result["runner_commands"] = None if args.build_only else {
            p: command_line(p, runner_command(p, f"gpu-{p}", runner_parameters(result["build"], {
                **args.series_parameters, **profile_parameters(args, p)})))
            for p in profiles}
    write_result(result, args)
    if result["build"] is None:
        log("build failed")
        return 1
    log(f"build done: {json.dumps(result['build']['seconds'])}")

    if not args.build_only:
        for profile in profiles:
            if deadline.left() < MIN_PROFILE_S:
                result["profiles"][profile] = {"skipped": f"only {deadline.left():.0f} s left before the deadline",
                                               "passed": False}
                log(f"profile {profile}: skipped ({result['profiles'][profile]['skipped']})")
            else:
                kill_step = args.kill_at_step if profile in kill_profiles else 0
                result["profiles"][profile] = run_profile(profile, args, result["build"], kill_step, deadline)
            result["seconds"] = round(time.time() - started, 1)
            write_result(result, args)

    result["seconds"] = round(time.time() - started, 1)
    if args.build_only:
        result["passed"] = True  # build() raises on any failed verification
    else:
        result["passed"] = bool(result["profiles"]) and all(p["passed"] for p in result["profiles"].values())
    write_result(result, args)
    print_summary(result)
    log(f"result: {args.out}" + (f" (and {args.mirror_dir})" if args.mirror_dir else "") +
        f"; {'PASSED' if result['passed'] else 'FAILED'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
