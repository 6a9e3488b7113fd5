"""The embedded offline default: a tiny Mistral base model and UltraFeedback-schema preference data.

No Hub access is needed: `ensure_offline_default()` builds, deterministically from a seed,
1. preference pairs from the task families in `helpers.tasks`, saved with `save_to_disk` in the exact
   schema of HuggingFaceH4/ultrafeedback_binarized (splits `train_prefs` / `test_prefs`);
2. a byte-level BPE tokenizer trained with `tokenizers` on the pretraining text, carrying the series'
   chat template (`helpers.chat.CHAT_TEMPLATE`);
3. a ~0.5M-parameter `MistralForCausalLM`, pretrained from random init on prompts followed by the
   chosen AND the rejected reply equally often: like a base model it has seen both behaviours and
   prefers neither, which is what ORPO then has to fix.
Both are saved with `save_pretrained` / `save_to_disk`, so notebooks 02-05 load them through the same
`from_pretrained(..., quantization_config=...)` and `load_from_disk` code as the real ones.

The profile ids `OFFLINE_MODEL_ID` / `OFFLINE_DATASET_ID` name it; `resolve()` maps them to paths.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.chat import CHAT_TEMPLATE
from helpers.tasks import FAMILIES, SCORE_CHOSEN, check_answer, make_example

OFFLINE_MODEL_ID = "offline:tiny-mistral"
OFFLINE_DATASET_ID = "offline:ultrafeedback-tiny"
BUILD_VERSION = "v8"  # bump whenever a change below alters the built data or model

# Per family: held-out test pairs, training pairs, and the size of the pretraining prompt pool
# (training prompts + extra ones; never a test prompt). Small families simply yield fewer extras.
N_TEST, N_TRAIN, N_PRETRAIN_POOL = 30, 200, 1200
VOCAB_SIZE = 1000  # requested; a ~512 vocab splits words into letters and caps what the model learns
MODEL_MAX_LENGTH = 256
PRETRAIN = dict(steps=1500, batch_size=64, lr=3e-3, warmup=100, log_every=150)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0-2 as in Mistral; a dedicated pad at 3


@dataclass(frozen=True)
class OfflineDefault:
    """Where the built offline default lives (what `ensure_offline_default` returns)."""

    model_dir: Path  # model + tokenizer, for AutoModelForCausalLM / AutoTokenizer.from_pretrained
    dataset_dir: Path  # DatasetDict for datasets.load_from_disk
    seed: int
    build_info: dict  # sizes, timings and the base model's held-out greedy success


# ---------------------------------------------------------------- data (notebook 02 loads it)
def _unique_examples(fam, rng: random.Random, n: int, exclude: set[str]) -> list[dict]:
    """Up to n examples whose prompts are new (not in `exclude`); adds their prompts to it."""
    out = []
    for _ in range(20 * n):  # small families (e.g. 300 possible prompts) run out: that is fine
        if len(out) == n:
            break
        ex = make_example(fam, rng)
        if ex["prompt"] not in exclude:
            exclude.add(ex["prompt"])
            out.append(ex)
    return out


def build_examples(seed: int = 0) -> dict[str, list[dict]]:
    """Train, held-out test and pretraining examples (dicts from `tasks.make_example`).

    Test prompts are drawn first and excluded from everything else, so a held-out prompt never
    appears in training or pretraining text (the same task may appear in another wording)."""
    rng = random.Random(seed)
    splits = {"train": [], "test": [], "pretrain": []}
    for fam in FAMILIES:
        seen: set[str] = set()
        test = _unique_examples(fam, rng, N_TEST, seen)
        train = _unique_examples(fam, rng, N_TRAIN, seen)
        assert len(test) == N_TEST and len(train) == N_TRAIN, fam.name
        splits["test"] += test
        splits["train"] += train
        splits["pretrain"] += train + _unique_examples(fam, rng, N_PRETRAIN_POOL - N_TRAIN, seen)
    for rows in splits.values():
        rng.shuffle(rows)  # mix the families
    return splits


def _ultrafeedback_row(ex: dict) -> dict:
    """One row in UltraFeedback's schema; `messages` equals `chosen`, as in the real data."""
    user = {"content": ex["prompt"], "role": "user"}
    chosen = [user, {"content": ex["chosen"], "role": "assistant"}]
    rejected = [user, {"content": ex["rejected"], "role": "assistant"}]
    return {"prompt": ex["prompt"], "prompt_id": hashlib.sha256(ex["prompt"].encode()).hexdigest(),
            "chosen": chosen, "rejected": rejected, "messages": chosen,
            "score_chosen": SCORE_CHOSEN, "score_rejected": ex["score_rejected"]}


def ultrafeedback_features():
    """The features of HuggingFaceH4/ultrafeedback_binarized (from its dataset card)."""
    from datasets import Features, List, Value

    message_list = List({"content": Value("string"), "role": Value("string")})
    return Features({"prompt": Value("string"), "prompt_id": Value("string"), "chosen": message_list,
                     "rejected": message_list, "messages": message_list,
                     "score_chosen": Value("float64"), "score_rejected": Value("float64")})


def build_preference_data(seed: int = 0):
    """The DatasetDict (`train_prefs`, `test_prefs`) that stands in for UltraFeedback binarized."""
    from datasets import Dataset, DatasetDict

    examples, features = build_examples(seed), ultrafeedback_features()
    return DatasetDict({
        f"{split}_prefs": Dataset.from_list([_ultrafeedback_row(e) for e in examples[split]], features=features)
        for split in ("train", "test")})


def pretraining_conversations(examples: dict[str, list[dict]]) -> list[list[dict]]:
    """Each pretraining prompt once with its chosen and once with its rejected reply: the base model
    sees both behaviours equally often and so starts 'unaligned'."""
    return [[{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex[key]}]
            for ex in examples["pretrain"] for key in ("chosen", "rejected")]


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE trained on `texts`, wrapped like Mistral's tokenizer (BOS added by default,
    no EOS), plus a dedicated `<pad>` (Mistral has none; pad = EOS would hide real EOS tokens from
    the loss in some collators) and the series' chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # byte-level never needs unk; Mistral has one
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=MODEL_MAX_LENGTH, chat_template=CHAT_TEMPLATE, padding_side="right")


def tokenizer_training_texts(conversations: list[list[dict]]) -> list[str]:
    """The chat template's text without BOS/EOS (those are special tokens, never merged by BPE)."""
    return [f"### User:\n{u['content']}\n\n### Assistant:\n{a['content']}" for u, a in conversations]


# ---------------------------------------------------------------- model
def tiny_mistral_config(tokenizer):
    """A Mistral-architecture config scaled down to ~0.5M parameters (GQA and RoPE as in the 7B)."""
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MODEL_MAX_LENGTH,
        sliding_window=None, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _length_grouped_batches(lengths: list[int], batch_size: int, gen: torch.Generator):
    """Endless random batches of similar-length rows: less padding, so faster steps on a CPU."""
    while True:
        perm = torch.randperm(len(lengths), generator=gen).tolist()
        pools = [sorted(perm[i:i + 16 * batch_size], key=lengths.__getitem__) for i in range(0, len(perm), 16 * batch_size)]
        batches = [pool[j:j + batch_size] for pool in pools for j in range(0, len(pool), batch_size)]
        for k in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[k]


def pretrain(model, tokenizer, conversations, seed: int, steps: int, batch_size: int, lr: float,
             warmup: int, log_every: int, verbose: bool = True) -> list[float]:
    """Plain-PyTorch causal-LM pretraining on chat-formatted conversations, loss on every token.

    The whole sequence, not answer-only: a base model learns from raw text, and ORPO's NLL term
    covers the prompt tokens too (TRL, by design). Tried answer-only here: ORPO then spent its LoRA
    capacity on learning the prompts, and held-out success after ORPO fell from ~85% to ~70%."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    rows = [(ids, ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # template has BOS
    gen = torch.Generator().manual_seed(seed)
    batches = _length_grouped_batches([len(ids) for ids, _ in rows], batch_size, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    # Linear warmup, then cosine decay to 10%: the usual recipe, stable at this high learning rate.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        batch = [rows[i] for i in next(batches)]
        width = max(len(seq) for seq, _ in batch)
        pad = lambda seq, value: seq + [value] * (width - len(seq))  # noqa: E731
        ids = torch.tensor([pad(seq, tokenizer.pad_token_id) for seq, _ in batch])
        labels = torch.tensor([pad(lab, -100) for _, lab in batch])
        mask = torch.tensor([pad([1] * len(seq), 0) for seq, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if verbose and (step % log_every == 0 or step == steps):
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            print(f"  pretrain step {step:5d}/{steps}  loss {recent:.3f}  {time.perf_counter() - start:6.1f}s", flush=True)
    model.eval()
    return losses


# ---------------------------------------------------------------- evaluation (notebooks 03 and 05)
@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """Greedy replies to single-turn prompts through the chat template (batched, left-padded)."""
    from .scoring import generate_greedy  # imported here: scoring -> data -> this module

    return generate_greedy(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens,
                           batch_size)


def greedy_task_success(model, tokenizer, prompts: list[str], max_new_tokens: int = 24, batch_size: int = 64) -> float:
    """Fraction of prompts whose greedy reply `tasks.check_answer` accepts (prompts of no task
    family are skipped). The objective before/after measure of notebook 05."""
    checks = [check_answer(p, a) for p, a in zip(prompts, greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size))]
    checks = [c for c in checks if c is not None]
    if not checks:
        raise ValueError("none of the prompts belongs to a task family")
    return sum(checks) / len(checks)


# ---------------------------------------------------------------- build and cache
def _shown(path: Path) -> str:
    """A path for printing: relative to the repo when inside it (no machine paths in notebook outputs)."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return f"$ORPO_OFFLINE_CACHE/{path.name}"


def default_cache_dir() -> Path:
    """$ORPO_OFFLINE_CACHE, else <repo root>/.cache/offline-default (git-ignored)."""
    env = os.environ.get("ORPO_OFFLINE_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".cache" / "offline-default"


def _atomic_build(final: Path, build) -> None:
    """Run build(tmp_dir) and rename tmp_dir to `final`: a directory at `final` is always complete.
    An interrupted build leaves only a hidden temp dir; of concurrent builders the first rename wins."""
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-tmp-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)  # atomic on one file system; fails if `final` now exists
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _quiet_progress_bars():
    """No tqdm bars from datasets/transformers while building: plain printed lines only."""
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    ds_was, tf_was = ds_logging.is_progress_bar_enabled(), tf_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar(), tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if ds_was:
            ds_logging.enable_progress_bar()
        if tf_was:
            tf_logging.enable_progress_bar()


@contextmanager
def _threads(n: int):
    """Use n CPU threads for the build, then restore the caller's setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _build_model(out: Path, seed: int, verbose: bool) -> None:
    """Tokenizer, then the pretrained tiny Mistral, saved (safetensors) with the tokenizer."""
    from transformers import GenerationConfig, MistralForCausalLM

    log = print if verbose else (lambda *a, **k: None)
    examples = build_examples(seed)
    conversations = pretraining_conversations(examples)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_training_texts(conversations))
    log(f"  tokenizer: {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f}s)", flush=True)
    torch.manual_seed(seed)
    model = MistralForCausalLM(tiny_mistral_config(tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  model: MistralForCausalLM, {n_params / 1e6:.2f}M parameters, pretraining on "
        f"{len(conversations)} conversations (chosen and rejected replies equally often)", flush=True)
    t1 = time.perf_counter()
    losses = pretrain(model, tokenizer, conversations, seed=seed, verbose=verbose, **PRETRAIN)
    pretrain_s = time.perf_counter() - t1
    success = greedy_task_success(model, tokenizer, [e["prompt"] for e in examples["test"]])
    log(f"  base model greedy success on held-out prompts: {success:.1%}", flush=True)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"build_version": BUILD_VERSION, "seed": seed, "parameters": n_params, "vocab_size": len(tokenizer),
            "pretrain": PRETRAIN, "pretrain_seconds": round(pretrain_s, 1), "final_loss": round(losses[-1], 4),
            "base_greedy_success_test": success}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))


def ensure_offline_default(seed: int = 0, cache_dir: str | Path | None = None, verbose: bool = True) -> OfflineDefault:
    """Build (data -> tokenizer -> pretrained model) whatever is missing from the cache, and return
    its paths. The first call takes about 2-3 minutes on a 2-core CPU; later calls are instant."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = root / f"{BUILD_VERSION}-seed{seed}"
    dataset_dir, model_dir = root / "dataset", root / "model"
    building = verbose and not (dataset_dir.exists() and model_dir.exists())
    if building:
        print(f"Building the offline default (seed {seed}) in {_shown(root)}", flush=True)
    start = time.perf_counter()
    # All cores (up to 4): alone on 2 cores, 2 threads pretrain 1.4x faster than 1. But if another busy process
    # shares the cores, every thread stalls at each sync point (20x slower measured): build while nothing else runs.
    with _threads(min(4, os.cpu_count() or 1)), _quiet_progress_bars():
        _atomic_build(dataset_dir, lambda out: build_preference_data(seed).save_to_disk(str(out)))
        _atomic_build(model_dir, lambda out: _build_model(out, seed, verbose))
    if building:
        print(f"Offline default ready in {time.perf_counter() - start:.0f}s: {_shown(root)}", flush=True)
    info = json.loads((model_dir / "build_info.json").read_text())
    return OfflineDefault(model_dir=model_dir, dataset_dir=dataset_dir, seed=seed, build_info=info)


def resolve(id_or_path: str, seed: int = 0, cache_dir: str | Path | None = None) -> str:
    """Map the offline ids to local paths (building them if needed); any other id passes through.
    Lets notebooks write `from_pretrained(resolve(params.model_id))` for Hub and offline alike."""
    if id_or_path not in (OFFLINE_MODEL_ID, OFFLINE_DATASET_ID):
        return id_or_path
    built = ensure_offline_default(seed=seed, cache_dir=cache_dir)
    return str(built.model_dir if id_or_path == OFFLINE_MODEL_ID else built.dataset_dir)
