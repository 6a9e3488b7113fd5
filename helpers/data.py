"""Loading, normalizing, measuring and filtering preference pairs (notebook 02; 05 reads what 02 saved).

One format leaves this module: TRL's *conversational, explicit prompt* format,
    prompt   = [{"role": "system"?...}, {"role": "user", "content": ...}]
    chosen   = [{"role": "assistant", "content": ...}]
    rejected = [{"role": "assistant", "content": ...}]
so ORPOTrainer applies the chat template exactly once (applying it yourself AND letting TRL do it doubles it)."""

from __future__ import annotations

import random
from pathlib import Path

from .chat import prompt_and_answer_texts, trl_tokens
from offline_default import OFFLINE_DATASET_ID, ensure_offline_default
from offline_default.tasks import instance_key

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    """The data is unusable. The message names the file/split, column, row and the fix."""


def load_preference_split(dataset_id: str, split: str, *, seed: int = 0):
    """Load one split from the offline default, a local file/folder, or the Hub (notebook 02)."""
    import datasets

    if dataset_id == OFFLINE_DATASET_ID:
        return datasets.load_from_disk(str(ensure_offline_default(seed=seed).dataset_dir))[split]
    path = Path(dataset_id).expanduser()
    if path.is_dir() and (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))[split]
    if path.is_dir() and (path / "dataset_info.json").exists():
        return datasets.load_from_disk(str(path))
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise DataError(f"{path.name}: unsupported file type {path.suffix!r}. Fix: use .json, .jsonl or .parquet.")
        if LOCAL_SUFFIXES[path.suffix] == "json":
            _check_json_file(path)
        try:
            return datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train")
        except Exception as err:  # pyarrow/datasets errors are long and cryptic: say which file, keep the cause
            raise DataError(f"{path.name}: could not be read as {path.suffix} ({type(err).__name__}: "
                            f"{str(err)[:200]}). Fix: check the file's format.") from None
    if path.exists() or dataset_id.startswith((".", "/", "~")):
        raise DataError(f"{dataset_id}: not a dataset file or a folder written by save_to_disk. Fix: pass a "
                        ".json/.jsonl/.parquet file, a save_to_disk folder, or a Hub id.")
    return _load_from_hub(dataset_id, split)


def load_preference_sources(dataset_id: str, train_split: str, eval_split: str, *, seed: int = 0):
    """(train, test or None, a sentence saying where each came from) for notebook 02.

    The test source is the split `eval_split` (UltraFeedback: `test_prefs`), or the second file it names. Without
    one, notebook 02 carves a held-out set from train by prompt (`carve_by_prompt`), so no prompt is in both."""
    import datasets

    eval_path = Path(eval_split).expanduser() if eval_split else None
    if eval_path is not None and eval_path.suffix in LOCAL_SUFFIXES and not eval_path.is_file():
        raise DataError(f"eval_split {eval_split!r} looks like a file but does not exist. Fix: the path of a second "
                        "file of pairs, a split name such as 'test_prefs', or '' to carve a test set from the data.")
    if eval_path is not None and eval_path.is_file():
        test = load_preference_split(str(eval_path), "train")
        return load_preference_split(dataset_id, train_split, seed=seed), test, f"the file {eval_path.name}"
    available = _split_names(dataset_id, seed)
    if available is not None and train_split not in available:
        raise DataError(f"{dataset_id} has no split {train_split!r}; it has {sorted(available)}. Fix: set "
                        "train_split (UltraFeedback uses train_prefs / test_prefs).")
    train = load_preference_split(dataset_id, train_split, seed=seed)
    if eval_split and eval_split != train_split:
        if available is not None and eval_split in available:
            return train, load_preference_split(dataset_id, eval_split, seed=seed), f"the split {eval_split!r}"
        if available is None and not Path(dataset_id).expanduser().exists():  # a Hub id whose splits we could not list
            try:
                return train, load_preference_split(dataset_id, eval_split, seed=seed), f"the split {eval_split!r}"
            except DataError:
                pass
    why = (f"it has one split only" if available is None or len(available) == 1 else
           f"it has no split {eval_split!r}" if eval_split else "eval_split is empty")
    return train, None, f"carved from {train_split!r} by prompt ({why})"


def _split_names(dataset_id: str, seed: int) -> list[str] | None:
    """Split names of a dataset, or None for a source that is one table (a file, a saved single Dataset)."""
    import datasets

    if dataset_id == OFFLINE_DATASET_ID:
        return list(datasets.load_from_disk(str(ensure_offline_default(seed=seed).dataset_dir)))
    path = Path(dataset_id).expanduser()
    if path.is_dir() and (path / "dataset_dict.json").exists():
        return list(datasets.load_from_disk(str(path)))
    if path.exists() or dataset_id.startswith((".", "/", "~")):
        return None
    try:
        return datasets.get_dataset_split_names(dataset_id)
    except Exception:  # no Hub here: let the load itself raise its one clear message
        return None


def split_key(prompt: list[dict]) -> str:
    """What "the same prompt" means for keeping train, validation and test apart (notebook 02): the task *instance*
    for a checkable task of the offline default ("Sort ascending: 3 1 2" and "Arrange from smallest to largest:
    3 1 2" are one prompt), else the text of every turn, whitespace normalized."""
    last = prompt[-1]["content"] if prompt else ""
    key = instance_key(last) if isinstance(last, str) else None
    if key:
        return f"task:{key}"
    return "text:" + " ".join(" ".join(str(m["content"]).split()) for m in prompt)


def carve_by_prompt(dataset, *, seed: int, share: float | None = None, n_pairs: int | None = None,
                    what: str = "held-out"):
    """Split `dataset` into (rest, carved) with no prompt (`split_key`) in both; deterministic from `seed` (02).

    `share`: that fraction of the distinct prompts; `n_pairs`: whole prompts until at least that many pairs (at most
    half of the prompts)."""
    keys = [split_key(p) for p in dataset["prompt"]]
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise DataError(f"The data has {len(distinct)} distinct prompt(s): a {what} set needs prompts that are not "
                        "trained on. Fix: use data with more distinct prompts.")
    random.Random(seed).shuffle(distinct)
    if share is not None:
        take = distinct[:min(len(distinct) - 1, max(1, round(share * len(distinct))))]
    else:
        per_key = {}
        for key in keys:
            per_key[key] = per_key.get(key, 0) + 1
        take, count = [], 0
        for key in distinct[:max(1, len(distinct) // 2)]:
            if count >= n_pairs:
                break
            take.append(key)
            count += per_key[key]
    taken = set(take)
    carved = [i for i, k in enumerate(keys) if k in taken]
    rest = [i for i, k in enumerate(keys) if k not in taken]
    return dataset.select(rest), dataset.select(carved)


def drop_shared_prompts(dataset, other):
    """`dataset` without the rows whose prompt (`split_key`) also occurs in `other`; returns (kept, n_dropped)."""
    blocked = {split_key(p) for p in other["prompt"]}
    keep = [i for i, p in enumerate(dataset["prompt"]) if split_key(p) not in blocked]
    return dataset.select(keep), len(dataset) - len(keep)


def _check_json_file(path: Path) -> None:
    """Readable, UTF-8, non-empty, and every line of a JSON Lines file is a JSON object: else one clear error."""
    import json

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path.name}, line {line}: not UTF-8 text (byte {err.start}). Fix: re-save the file as "
                        "UTF-8.") from None
    if not text.strip():
        raise DataError(f"{path.name}: the file is empty. Fix: point dataset_id at a file with preference pairs.")
    if path.suffix == ".json" and text.lstrip().startswith("["):  # one JSON array
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path.name}, line {err.lineno}: invalid JSON ({err.msg}).") from None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                if not isinstance(json.loads(line), dict):
                    raise json.JSONDecodeError("expected an object", line, 0)
            except json.JSONDecodeError as err:
                raise DataError(f"{path.name}, line {number}: invalid JSON line ({err.msg}). Fix: one JSON "
                                'object per line, e.g. {"prompt": ..., "chosen": ..., "rejected": ...}.') from None


def _load_from_hub(dataset_id: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(dataset_id, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise DataError(f"{dataset_id} has no split {split!r}: {err}. Fix: set train_split/eval_split "
                            "(UltraFeedback uses train_prefs / test_prefs).") from None
        raise
    except Exception as err:  # offline, gated, typo: all surface as different exception types
        raise DataError(f"Could not load {dataset_id!r} from the Hugging Face Hub ({type(err).__name__}: "
                        f"{str(err)[:200]}). Fix: check the id and your network; for a gated dataset run "
                        "`huggingface-cli login` or set HF_TOKEN in the environment; or use the offline "
                        f"default (dataset_id={OFFLINE_DATASET_ID!r}) or a local file/folder.") from None


def _as_messages(value, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                 for m in value):
        unknown = sorted({str(m["role"]) for m in value} - ROLES)
        if unknown:
            raise DataError(f"{where}: unknown role(s) {unknown}. Fix: use {sorted(ROLES)}.")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: expected a string or a list of {{role, content}} messages, got "
                    f"{type(value).__name__}. Fix: use UltraFeedback's schema or plain strings.")


def to_explicit_prompt(example: dict, idx: int = 0, *, source: str = "data") -> dict:
    """One row -> TRL's explicit-prompt conversational format. UltraFeedback's `chosen`/`rejected` are whole
    conversations: the prompt is everything before the last (assistant) turn; plain strings work too."""
    for column in ("chosen", "rejected"):
        if column not in example:
            raise DataError(f"{source}, row {idx}: missing column {column!r}. Fix: provide prompt/chosen/rejected.")
    chosen = _as_messages(example["chosen"], "assistant", f"{source}, row {idx}, column 'chosen'")
    rejected = _as_messages(example["rejected"], "assistant", f"{source}, row {idx}, column 'rejected'")
    if len(chosen) > 1:  # a whole conversation: the prompt is the shared prefix
        prompt = chosen[:-1]
    elif "prompt" in example:
        prompt = _as_messages(example["prompt"], "user", f"{source}, row {idx}, column 'prompt'")
    else:
        raise DataError(f"{source}, row {idx}: no prompt (no 'prompt' column and 'chosen' is a single turn).")
    for name, answer in (("chosen", chosen[-1]), ("rejected", rejected[-1])):
        if answer["role"] != "assistant":
            raise DataError(f"{source}, row {idx}, column {name!r}: the last message has role "
                            f"{answer['role']!r}, expected 'assistant'.")
    return {"prompt": prompt, "chosen": [chosen[-1]], "rejected": [rejected[-1]]}


MAX_BAD_SHARE = 0.5  # above this, the data is more likely in the wrong format than a little dirty


def normalize_pairs(dataset, source: str):
    """Validate every row and convert it to the explicit-prompt format (notebook 02); returns (dataset, report).

    Missing columns raise. Bad *rows* (wrong types or roles, empty answers, chosen == rejected) are dropped and
    counted, unless they are the majority (a format problem): then one error names the first bad rows."""
    from collections import Counter

    from datasets import Dataset

    missing = {"chosen", "rejected"} - set(dataset.column_names)
    if missing:
        raise DataError(f"{source}: missing column(s) {sorted(missing)}; found {dataset.column_names}. Fix: "
                        "provide prompt/chosen/rejected (strings or UltraFeedback-style message lists).")
    rows, reasons, examples = [], Counter(), []
    for idx, example in enumerate(dataset):
        try:
            row = to_explicit_prompt(example, idx, source=source)
            problem = _content_problem(row)
        except DataError as err:
            problem, row = str(err).split(": ", 1)[-1], None
        if problem:
            reasons[problem.split(". Fix")[0].split(", got ")[0]] += 1
            if len(examples) < 5:
                examples.append(f"{source}, row {idx}: {problem}")
        else:
            rows.append(row)
    bad = sum(reasons.values())
    if not rows or bad > MAX_BAD_SHARE * len(dataset):
        raise DataError(f"{source}: {bad} of {len(dataset)} rows are unusable ({dict(reasons)}), e.g. "
                        f"{examples[:3]}. Fix: check the format (UltraFeedback schema or prompt/chosen/rejected "
                        "strings).")
    return Dataset.from_list(rows), {"rows": len(dataset), "dropped_bad_rows": bad, "reasons": dict(reasons),
                                     "examples": examples}


def _content_problem(row: dict) -> str | None:
    """Why a well-formed row still can't train (None if it can)."""
    for name in ("chosen", "rejected"):
        if not isinstance(row[name][-1]["content"], str) or not row[name][-1]["content"].strip():
            return f"column {name!r}: empty or whitespace-only answer"
    if not any(isinstance(m["content"], str) and m["content"].strip() for m in row["prompt"]):
        return "column 'prompt': empty prompt"
    if row["chosen"][-1]["content"].strip() == row["rejected"][-1]["content"].strip():
        return "chosen identical to rejected (no preference to learn)"
    return None


def token_lengths(example: dict, tokenizer) -> dict:
    """Prompt and answer lengths in tokens, exactly as TRL will build them (template once, BOS/EOS rules included)."""
    out = {}
    for name in ("chosen", "rejected"):
        ids, prompt_len = trl_tokens(tokenizer, *prompt_and_answer_texts(tokenizer, example["prompt"], example[name]))
        out["prompt_tokens"] = prompt_len
        out[f"{name}_tokens"] = len(ids) - prompt_len
    out["pair_tokens"] = out["prompt_tokens"] + max(out["chosen_tokens"], out["rejected_tokens"])
    return out


def mark_prompt_and_answer(example: dict, tokenizer, answer: str = "chosen") -> str:
    """Render one example token by token, as TRL tokenizes it: prompt tokens in [brackets], answer tokens in
    <<angle brackets>> (the EOS TRL appends included)."""
    ids, prompt_len = trl_tokens(tokenizer, *prompt_and_answer_texts(tokenizer, example["prompt"], example[answer]))
    pieces = [tokenizer.decode([i]) for i in ids]
    return "".join(f"[{p}]" if k < prompt_len else f"<<{p}>>" for k, p in enumerate(pieces))


def drop_overlong(dataset, max_length: int):
    """Split a dataset with length columns into (kept, dropped) at `max_length` (prompt + longer answer), notebook 02.
    Dropped, not truncated: TRL can cut an answer to zero tokens, whose mean log-prob is 0/0 = NaN."""
    kept = dataset.filter(lambda row: row["pair_tokens"] <= max_length)
    dropped = dataset.filter(lambda row: row["pair_tokens"] > max_length)
    return kept, dropped


def subsample(dataset, n: int, seed: int):
    """A seeded random subset of at most n rows (all rows if there are fewer)."""
    return dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))
