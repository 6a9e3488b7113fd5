"""Loading, normalizing, measuring and filtering preference pairs (notebook 02; 05 reads what 02 saved).

One format leaves this module: TRL's *conversational, explicit prompt* format,
    prompt   = [{"role": "system"?...}, {"role": "user", "content": ...}]
    chosen   = [{"role": "assistant", "content": ...}]
    rejected = [{"role": "assistant", "content": ...}]
so ORPOTrainer applies the chat template exactly once (applying it yourself AND letting TRL do it doubles it).
"""

from __future__ import annotations

from pathlib import Path

from .offline_default import OFFLINE_DATASET_ID, ensure_offline_default

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
    """One row -> TRL's explicit-prompt conversational format (accepts UltraFeedback and plain strings).

    UltraFeedback stores `chosen`/`rejected` as whole conversations ending in the assistant's answer; the
    prompt messages are everything before that last turn (so a system turn, if any, is kept).
    """
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
    """Validate every row and convert it to the explicit-prompt format (notebook 02).

    Missing columns stop here with one error. Bad *rows* (wrong types or roles, empty answers, chosen ==
    rejected) are dropped and counted - unless they are the majority, which means a format problem: then
    one error that names the first bad rows. Returns (clean dataset, report of what was dropped).
    """
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
    """Prompt and answer lengths in tokens, exactly as TRL will see them (template once, EOS included)."""
    prompt_ids = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True)
    out = {"prompt_tokens": len(_ids(prompt_ids))}
    for name in ("chosen", "rejected"):
        full = _ids(tokenizer.apply_chat_template(example["prompt"] + example[name], tokenize=True))
        out[f"{name}_tokens"] = len(full) - out["prompt_tokens"]
    out["pair_tokens"] = out["prompt_tokens"] + max(out["chosen_tokens"], out["rejected_tokens"])
    return out


def _ids(encoded) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list in some versions and a BatchEncoding in others."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def mark_prompt_and_answer(example: dict, tokenizer, answer: str = "chosen") -> str:
    """Render one example token by token: prompt tokens in [brackets], answer tokens in <<angle brackets>>."""
    prompt_len = len(_ids(tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True,
                                                          tokenize=True)))
    ids = _ids(tokenizer.apply_chat_template(example["prompt"] + example[answer], tokenize=True))
    pieces = [tokenizer.decode([i]) for i in ids]
    return "".join(f"[{p}]" if k < prompt_len else f"<<{p}>>" for k, p in enumerate(pieces))


def drop_overlong(dataset, max_length: int):
    """Split a dataset with length columns into (kept, dropped) at `max_length` (prompt + longer answer).

    We drop rather than truncate: TRL 1.x never truncates prompts and can cut an answer to zero tokens,
    whose mean log-prob is 0/0 = NaN.
    """
    kept = dataset.filter(lambda row: row["pair_tokens"] <= max_length)
    dropped = dataset.filter(lambda row: row["pair_tokens"] > max_length)
    return kept, dropped


def subsample(dataset, n: int, seed: int):
    """A seeded random subset of at most n rows (all rows if there are fewer)."""
    return dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))
