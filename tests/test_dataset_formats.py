"""Preference datasets learners use load as they are (or with one parameter) into the course's explicit-prompt format.

The fixtures in tests/fixtures/datasets/ are schema-exact rows written for these tests (our own text, no copied
data). Each schema was confirmed as follows (public copies searched in 2026):

* HuggingFaceH4/ultrafeedback_binarized: splits train_prefs / test_prefs (+ *_sft, *_gen); `prompt` (string),
  `prompt_id`, `chosen` / `rejected` / `messages` (lists of {content, role}, the user turn included),
  `score_chosen`, `score_rejected`: the card's dataset_info (tests/fixtures/ultrafeedback_features.json) and the
  Hub viewer's split list.
* argilla/ultrafeedback-binarized-preferences-cleaned: one split `train` (60,917 rows); `source`, `prompt` (string),
  `chosen` (list of {content, role}), `chosen-rating` (float64), `chosen-model`, `rejected`, `rejected-rating`,
  `rejected-model`: the card's dataset_info (huggingface.co/datasets/argilla/ultrafeedback-binarized-preferences-
  cleaned, README.md).
* mlabonne/orpo-dpo-mix-40k: one split `train` (44,245 rows, v1.2); `source`, `chosen`, `rejected` (lists of
  {content, role}), `prompt`, `question` (strings; v1.0 had no `question`): the card's dataset_info. That the lists
  hold the user turn(s) and can be multi-turn: code that consumes it (ORPO training scripts apply the chat template
  to row["chosen"] alone; a preprocessing script reads x['chosen'][0] as the prompt and len(chosen) // 2 as the
  number of turns; ms-swift's dataset registry maps chosen / rejected to `messages` / `rejected_messages`).
* Intel/orca_dpo_pairs: one file orca_rlhf.jsonl, split `train`; `system`, `question`, `chosen`, `rejected`
  strings (the card has no dataset_info): code that consumes it, e.g. a DPO project's chatml_format (`if
  len(example['system']) > 0`: an empty system is skipped; example['question'], ['chosen'], ['rejected']) and
  oumi's OrcaDpoPairsDataset (`sample.get("system", "")`, `sample["question"]`). Earlier versions named the answers
  chatgpt / llama2-13b-chat (mlabonne/chatml_dpo_pairs's card code); the file's last commit is "revise fields name".
* Anthropic/hh-rlhf: split `train` (and `test`), per data_dir (e.g. helpful-base); `chosen` / `rejected` are whole
  "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts: TRL's examples/datasets/hh-rlhf-helpful-base.py
  (`extract_dialogue` cuts at the last "\\n\\nAssistant: " and splits the rest on "\\n\\nHuman: " /
  "\\n\\nAssistant: ").
* TRL's conversational implicit-prompt preference format: `chosen` / `rejected` message lists that share the leading
  turns, no `prompt`: TRL's docs (dataset_formats, "Preference ... with implicit prompt") and the
  trl-internal-testing/zen config conversational_implicit_prompt_preference (features chosen, rejected only).

From the Hub, the one-split datasets (split `train`) need `-p train_split train`; notebook 02's error says so.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

import runner
from helpers.data import (DataError, carve_by_prompt, load_preference_sources, load_preference_split, normalize_pairs,
                          split_key)
from helpers.profiles import ParameterError, resolve_config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
CONVERSATIONS = "conversations in chosen/rejected -> prompt = the turns before the last answer"
HH = "Anthropic HH-RLHF transcripts -> prompt = transcript up to the last Assistant turn"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def load(name, **columns):
    return normalize_pairs(load_preference_split(str(FIXTURES / name), "train"), name, **columns)


@pytest.mark.parametrize("name, line, rows", [
    ("ultrafeedback_binarized.jsonl", CONVERSATIONS, 3),
    ("argilla_ultrafeedback_cleaned.jsonl", CONVERSATIONS, 3),
    ("orpo_dpo_mix.jsonl", CONVERSATIONS, 3),
    ("orca_dpo_pairs.jsonl", "'question' + chosen/rejected columns -> prompt = 'system' (skipped if empty) + "
                             "'question'", 3),
    ("hh_rlhf.jsonl", HH, 6),
    ("trl_implicit_prompt.jsonl", CONVERSATIONS, 3),
])
def test_each_format_loads_as_is_and_says_how_its_columns_were_mapped(name, line, rows):
    pairs, report = load(name)
    assert report["format"] == line
    assert report["dropped_bad_rows"] == 0 and len(pairs) == rows
    assert pairs.column_names == ["prompt", "chosen", "rejected"]  # extra columns (chosen-rating, ...) are left out
    for row in pairs:
        assert len(row["chosen"]) == len(row["rejected"]) == 1
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["prompt"][-1]["role"] == "user"
        assert "system" not in [m["role"] for m in row["prompt"][1:]]  # a system turn only leads the prompt


def test_ultrafeedback_and_argilla_take_the_user_turn_from_the_conversation():
    for name in ("ultrafeedback_binarized.jsonl", "argilla_ultrafeedback_cleaned.jsonl"):
        pairs, _ = load(name)
        raw = [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]
        assert pairs["prompt"] == [[user(r["prompt"])] for r in raw]
        assert [p[0]["content"] for p in pairs["chosen"]] == [r["chosen"][-1]["content"] for r in raw]


def test_orpo_dpo_mix_multi_turn_prompt_is_every_turn_before_the_answer():
    pairs, _ = load("orpo_dpo_mix.jsonl")
    assert pairs[1]["prompt"] == [user("I want to learn to juggle."),
                                  assistant("Start with one ball and toss it from hand to hand."),
                                  user("And after that?")]
    assert pairs[1]["chosen"] == [assistant("Add a second ball once the first toss is steady.")]
    assert pairs[1]["rejected"] == [assistant("Juggling is not worth learning.")]
    assert pairs[2]["prompt"] == [system("You are an honest assistant."), user("Can you see me?")]


def test_orca_skips_an_empty_system_and_keeps_a_real_one():
    pairs, _ = load("orca_dpo_pairs.jsonl")
    assert pairs[0]["prompt"] == [user("Is the following sentence true? 'Ice is colder than steam.'")]
    assert pairs[1]["prompt"] == [system("You are a helpful assistant who explains step by step."),
                                  user("Tom has 3 apples and buys 2 more. How many does he have?")]
    assert pairs[1]["chosen"] == [assistant("He starts with 3 and adds 2, so he has 5 apples.")]


def test_hh_rlhf_cuts_at_the_last_assistant_turn_not_at_a_common_prefix():
    pairs, _ = load("hh_rlhf.jsonl")
    # both answers start with "I think the capital is": a character-level common prefix would leave "Paris."
    assert pairs[0] == {"prompt": [user("What is the capital of France?")],
                        "chosen": [assistant("I think the capital is Paris.")],
                        "rejected": [assistant("I think the capital is Lyon.")]}
    assert pairs[2]["prompt"] == [user("Can you recommend a book?"), assistant("Sure, what do you like to read?"),
                                  user("Mostly science fiction.")]
    assert pairs[2]["chosen"] == [assistant("You might enjoy The Left Hand of Darkness by Ursula K. Le Guin.")]


def test_hh_rows_whose_transcripts_differ_before_the_answer_are_dropped_and_counted():
    rows = [json.loads(line) for line in (FIXTURES / "hh_rlhf.jsonl").read_text().splitlines()]
    rows[1]["rejected"] = rows[1]["rejected"].replace("boil an egg", "fry an egg")
    pairs, report = normalize_pairs(Dataset.from_list(rows), "hh.jsonl")
    assert len(pairs) == 5 and report["dropped_bad_rows"] == 1
    assert report["reasons"] == {"chosen and rejected differ before their last turn (no shared prompt).": 1}


def test_trl_implicit_prompt_keeps_the_shared_system_and_earlier_turns():
    pairs, _ = load("trl_implicit_prompt.jsonl")
    assert pairs[1]["prompt"] == [system("Answer in one word."), user("What do bees make?")]
    assert pairs[2]["prompt"] == [user("Pick a number."), assistant("Seven."), user("Now double it.")]
    assert pairs[2]["rejected"] == [assistant("Seventy-seven.")]


# ---- a file that cannot be mapped: one error, from the columns alone, with the parameter that maps it ------------

ODD_ROWS = [{"instruction": f"Question {i}?", "system_prompt": "" if i % 2 else "Be brief.", "chosen": f"Answer {i}.",
             "rejected": "No idea."} for i in range(4)]


def test_an_unmappable_file_is_one_error_naming_columns_closest_format_and_parameters(monkeypatch):
    import helpers.data

    monkeypatch.setattr(helpers.data, "to_explicit_prompt", lambda *a, **k: pytest.fail("rows were read"))
    with pytest.raises(DataError) as err:
        normalize_pairs(Dataset.from_list(ODD_ROWS), "mine.jsonl")
    assert str(err.value) == (
        "mine.jsonl: cannot map the columns ['instruction', 'system_prompt', 'chosen', 'rejected'] to "
        "prompt/chosen/rejected (no prompt column, and 'chosen' is one answer). Closest known format: "
        "Intel/orca_dpo_pairs (system, question, chosen, rejected strings). Fix: "
        "`-p prompt_column instruction -p system_column system_prompt`.")


def test_the_parameters_the_error_names_map_the_file():
    pairs, report = normalize_pairs(Dataset.from_list(ODD_ROWS), "mine.jsonl", prompt_column="instruction",
                                    system_column="system_prompt")
    assert report["format"] == ("'instruction' + chosen/rejected columns -> prompt = 'system_prompt' (skipped if "
                                "empty) + 'instruction'")
    assert pairs[0]["prompt"] == [system("Be brief."), user("Question 0?")]
    assert pairs[1]["prompt"] == [user("Question 1?")]


@pytest.mark.parametrize("rows, columns, match", [
    (ODD_ROWS, {"prompt_column": "instruct"}, r"\(no column \['instruct'\]\).*Fix: `-p prompt_column instruction"),
    ([{"prompt": "q", "good": "a", "bad": "b"}], {}, r"no column \['chosen', 'rejected'\].*TRL's preference format.*"
                                                     "rename the answer columns to chosen and rejected"),
])
def test_missing_columns_name_what_was_found(rows, columns, match):
    with pytest.raises(DataError, match=match):
        normalize_pairs(Dataset.from_list(rows), "mine.jsonl", **columns)


def test_prompt_and_system_column_are_parameters_validated_like_the_others():
    cfg = resolve_config("tiny", runner.collect_overrides(runner.parse_args(
        ["-p", "prompt_column", "instruction", "-p", "system_column", "system_prompt"])))
    assert (cfg.prompt_column, cfg.system_column) == ("instruction", "system_prompt")
    assert (resolve_config("tiny").prompt_column, resolve_config("tiny").system_column) == ("", "")  # "" = auto
    with pytest.raises(ParameterError, match="`prompt_column` must be str"):
        resolve_config("tiny", runner.collect_overrides(runner.parse_args(["-p", "prompt_column", "5"])))


# ---- a single HH-style file has no test split: one is carved by prompt --------------------------------------------


def test_a_single_hh_file_gets_a_carved_test_split():
    path = FIXTURES / "hh_rlhf.jsonl"
    train, test, how = load_preference_sources(str(path), "train_prefs", "test_prefs")
    assert test is None and "carved" in how and "one split" in how
    pairs, _ = normalize_pairs(train, path.name)
    rest, held = carve_by_prompt(pairs, share=0.1, seed=0, what="test")
    assert len(held) == 1 and len(rest) == 5
    assert not {split_key(p) for p in rest["prompt"]} & {split_key(p) for p in held["prompt"]}


@pytest.mark.slow  # ~15 s with the offline default built (its tokenizer); building it first takes minutes
def test_notebook_02_prepares_an_hh_file_end_to_end(tmp_path):
    """01 -> 02 through the runner on the one-file HH fixture, as a learner passes a local file."""
    from datasets import load_from_disk

    result = subprocess.run([sys.executable, "-m", "runner", "--run-name", "hh", "--only", "01,02", "-p",
                             "dataset_id", str(FIXTURES / "hh_rlhf.jsonl"), "-p", "max_length", "512"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "ORPO_OUTPUTS_DIR": str(tmp_path)})
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert f"format: {HH}" in result.stdout
    report = json.loads((tmp_path / "hh" / "data_report.json").read_text())
    assert report["bad_rows"]["train"]["format"] == HH and report["bad_rows"]["test"] is None
    assert report["how_formed"]["test"].startswith("carved from train_prefs")
    data = load_from_disk(str(tmp_path / "hh" / "data"))
    keys = {name: {split_key(p) for p in data[name]["prompt"]} for name in ("train", "validation", "test")}
    assert all(keys.values()) and not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]
    assert data["train"].column_names[:3] == ["prompt", "chosen", "rejected"]
