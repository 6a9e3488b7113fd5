"""Loading, normalizing, measuring and filtering preference pairs (notebook 02; 05 reads what 02 saved). One format
leaves it, TRL's conversational explicit-prompt one, so the chat template is applied once (docs/design-decisions.md)."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from itertools import accumulate
from pathlib import Path

from .chat import prompt_and_answer_texts, trl_tokens
from offline_default import OFFLINE_DATASET_ID, ensure_offline_default
from offline_default.tasks import instance_key

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
ROLES = {"system", "user", "assistant"}
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")  # Anthropic HH-RLHF: "\n\nHuman: ...\n\nAssistant: ..."
MAX_BAD_SHARE = 0.5  # above this, the data is more likely in the wrong format than a little dirty


class DataError(ValueError):
    """The data is unusable. The message names the file/split, column, row and the fix."""


def load_preference_split(dataset_id: str, split: str, *, seed: int = 0):
    """Load one split from the offline default, a local file/folder, or the Hub (notebook 02)."""
    import datasets
    if dataset_id == OFFLINE_DATASET_ID:
        return datasets.load_from_disk(str(ensure_offline_default(seed=seed).dataset_dir))[split]
    path = Path(dataset_id).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        saved = datasets.load_from_disk(str(path))  # a DatasetDict (pick the split) or one Dataset
        return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
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
    """(train, test or None, a sentence saying where each came from) for notebook 02. The test source is the split or
    second file `eval_split` names; without one, notebook 02 carves it from train (`carve_by_prompt`)."""
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
    for a checkable task of the offline default (any wording), else the text of every turn, whitespace normalized."""
    last = prompt[-1]["content"] if prompt else ""
    key = instance_key(last) if isinstance(last, str) else None
    return f"task:{key}" if key else "text:" + " ".join(" ".join(str(m["content"]).split()) for m in prompt)


def carve_by_prompt(dataset, *, seed: int, share: float | None = None, n_pairs: int | None = None,
                    what: str = "held-out"):
    """Split `dataset` into (rest, carved) with no prompt (`split_key`) in both; deterministic from `seed` (02).
    `share`: that fraction of the prompts; `n_pairs`: whole prompts until at least that many pairs (at most half)."""
    keys = [split_key(p) for p in dataset["prompt"]]
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise DataError(f"The data has {len(distinct)} distinct prompt(s): a {what} set needs prompts that are not "
                        "trained on. Fix: use data with more distinct prompts.")
    random.Random(seed).shuffle(distinct)
    if share is not None:
        take = distinct[:min(len(distinct) - 1, max(1, round(share * len(distinct))))]
    else:  # whole prompts while fewer than n_pairs pairs are taken
        per_key, candidates = Counter(keys), distinct[:max(1, len(distinct) // 2)]
        taken_before = accumulate((per_key[key] for key in candidates), initial=0)
        take = [key for key, count in zip(candidates, taken_before) if count < n_pairs]
    taken = set(take)
    return (dataset.select([i for i, k in enumerate(keys) if k not in taken]),
            dataset.select([i for i, k in enumerate(keys) if k in taken]))


def drop_shared_prompts(dataset, other):
    """`dataset` without the rows whose prompt (`split_key`) also occurs in `other`; returns (kept, n_dropped)."""
    blocked = {split_key(p) for p in other["prompt"]}
    keep = [i for i, p in enumerate(dataset["prompt"]) if split_key(p) not in blocked]
    return dataset.select(keep), len(dataset) - len(keep)


def _check_json_file(path: Path) -> None:
    """Readable, UTF-8, non-empty, and every line of a JSON Lines file is a JSON object: else one clear error."""
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
    if isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value):
        unknown = sorted({str(m["role"]) for m in value} - ROLES)
        if unknown:
            raise DataError(f"{where}: unknown role(s) {unknown}. Fix: use {sorted(ROLES)}.")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: expected a string or a list of {{role, content}} messages, got "
                    f"{type(value).__name__}. Fix: use UltraFeedback's schema or plain strings.")


def _transcript(text, where: str) -> list[dict]:
    """An HH-RLHF transcript -> messages, cut at the LAST Assistant turn as TRL's hh-rlhf-helpful-base.py does."""
    head, cut, answer = text.rpartition("\n\nAssistant:") if isinstance(text, str) else ("", "", "")
    turns = HH_TURN.split(head)
    if not cut or turns[0].strip():
        raise DataError(f"{where}: not a '\\n\\nHuman: ...\\n\\nAssistant: ...' transcript.")
    roles = ["user" if who == "Human" else "assistant" for who in turns[1::2]] + ["assistant"]
    return [{"role": r, "content": c} for r, c in zip(roles, turns[2::2] + [answer.removeprefix(" ")])]


def to_explicit_prompt(example: dict, idx: int = 0, *, source: str = "data", prompt_column: str = "prompt",
                       system_column: str = "", transcripts: bool = False) -> dict:
    """One row -> TRL's explicit-prompt format: the prompt is the turns before the last answer of whole conversations
    in `chosen`/`rejected` (both must share them), else `prompt_column`; a non-empty `system_column` leads it."""
    where = f"{source}, row {idx}"
    chosen, rejected = (_transcript(example.get(name), f"{where}, column {name!r}") if transcripts else
                        _as_messages(example.get(name), "assistant", f"{where}, column {name!r}")
                        for name in ("chosen", "rejected"))
    for name, answer in (("chosen", chosen[-1]), ("rejected", rejected[-1])):
        if answer["role"] != "assistant":
            raise DataError(f"{where}, column {name!r}: the last message has role {answer['role']!r}, expected "
                            "'assistant'.")
    if len(chosen) > 1:
        prompt = chosen[:-1]
        if rejected[:-1] != prompt:
            raise DataError(f"{where}: chosen and rejected differ before their last turn (no shared prompt).")
    elif example.get(prompt_column) is not None:
        prompt = _as_messages(example[prompt_column], "user", f"{where}, column {prompt_column!r}")
    else:
        raise DataError(f"{where}: no prompt (no prompt column and 'chosen' is a single turn).")
    system = example.get(system_column) if system_column else None
    if isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":  # orca: often empty
        prompt = [{"role": "system", "content": system}] + prompt
    return {"prompt": prompt, "chosen": [chosen[-1]], "rejected": [rejected[-1]]}


def preference_format(dataset, source: str = "data", prompt_column: str = "", system_column: str = ""):
    """Notebook 02: map the columns to prompt/chosen/rejected: (`to_explicit_prompt` keywords, a line), or DataError."""
    columns, first = dataset.column_names, (dataset[0] if len(dataset) else {})
    prompt = prompt_column or next((c for c in ("prompt", "question") if c in columns), "")
    system = system_column or ("system" if "system" in columns else "")
    transcripts = not prompt and isinstance(first.get("chosen"), str) and bool(HH_TURN.match(first["chosen"]))
    conversations = isinstance(first.get("chosen"), list) and len(first["chosen"]) > 1
    missing = [c for c in ("chosen", "rejected", prompt_column, system_column) if c and c not in columns]
    if missing or not (prompt or transcripts or conversations):
        text = [c for c in columns if isinstance(first.get(c), str) and c not in ("chosen", "rejected")]
        closest, fix = (("TRL's preference format (prompt, chosen, rejected)", "rename the answer columns to chosen "
                         "and rejected") if {"chosen", "rejected"} & set(missing) else
                        ("Intel/orca_dpo_pairs (system, question, chosen, rejected strings)",
                         f"`-p prompt_column {next((c for c in text if 'system' not in c), '<column>')}" +
                         next((f" -p system_column {c}" for c in text if "system" in c), "") + "`"))
        why = f"no column {missing}" if missing else "no prompt column, and 'chosen' is one answer"
        raise DataError(f"{source}: cannot map the columns {columns} to prompt/chosen/rejected ({why}). Closest "
                        f"known format: {closest}. Fix: {fix}.")
    lead = f"{system!r} (skipped if empty) + " if system else ""
    line = (f"Anthropic HH-RLHF transcripts -> prompt = {lead}transcript up to the last Assistant turn" if transcripts
            else f"conversations in chosen/rejected -> prompt = {lead}the turns before the last answer" if conversations
            else f"{prompt!r} + chosen/rejected columns -> prompt = {lead}{prompt!r}")
    return dict(prompt_column=prompt, system_column=system, transcripts=transcripts), line


def normalize_pairs(dataset, source: str, *, prompt_column: str = "", system_column: str = ""):
    """Map the columns (`preference_format`), validate and convert every row to the explicit-prompt format (notebook
    02); returns (dataset, report). Bad *rows* are dropped and counted, unless most are bad: then one DataError."""
    from datasets import Dataset
    mapping, line = preference_format(dataset, source, prompt_column, system_column)
    rows, reasons, examples = [], Counter(), []
    for idx, example in enumerate(dataset):
        try:
            row = to_explicit_prompt(example, idx, source=source, **mapping)
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
        raise DataError(f"{source} ({line}): {bad} of {len(dataset)} rows are unusable ({dict(reasons)}), e.g. "
                        f"{examples[:3]}. Fix: check the format, or map the columns with prompt_column / "
                        "system_column.")
    return Dataset.from_list(rows), {"format": line, "rows": len(dataset), "dropped_bad_rows": bad,
                                     "reasons": dict(reasons), "examples": examples}


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
        out["prompt_tokens"], out[f"{name}_tokens"] = prompt_len, len(ids) - prompt_len
    out["pair_tokens"] = out["prompt_tokens"] + max(out["chosen_tokens"], out["rejected_tokens"])
    return out


def mark_prompt_and_answer(example: dict, tokenizer, answer: str = "chosen") -> str:
    """Notebook 02: one example as TRL tokenizes it, prompt tokens in [brackets], answer tokens (+ EOS) in <<...>>."""
    ids, prompt_len = trl_tokens(tokenizer, *prompt_and_answer_texts(tokenizer, example["prompt"], example[answer]))
    pieces = [tokenizer.decode([i]) for i in ids]
    return "".join(f"[{p}]" if k < prompt_len else f"<<{p}>>" for k, p in enumerate(pieces))


def drop_overlong(dataset, max_length: int):
    """Notebook 02: (kept, dropped) at `max_length` tokens of prompt + longer answer; dropped, never truncated."""
    return (dataset.filter(lambda row: row["pair_tokens"] <= max_length),
            dataset.filter(lambda row: row["pair_tokens"] > max_length))


def subsample(dataset, n: int, seed: int):
    """A seeded random subset of at most n rows (all rows if there are fewer)."""
    return dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))
