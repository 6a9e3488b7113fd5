import pytest
from datasets import Dataset

from helpers.data import DataError, drop_overlong, load_preference_split, subsample, to_explicit_prompt

UF_ROW = {
    "prompt": "What is 2 plus 2?",
    "prompt_id": "abc",
    "chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"},
               {"role": "assistant", "content": "4"}],
    "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"},
                 {"role": "assistant", "content": "5"}],
    "score_chosen": 9.0, "score_rejected": 2.0,
}


def test_ultrafeedback_row_keeps_the_system_turn_in_the_prompt():
    row = to_explicit_prompt(UF_ROW)
    assert row["prompt"] == UF_ROW["chosen"][:-1]
    assert row["chosen"] == [{"role": "assistant", "content": "4"}]
    assert row["rejected"] == [{"role": "assistant", "content": "5"}]


def test_plain_strings_become_conversational():
    row = to_explicit_prompt({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."})
    assert row == {"prompt": [{"role": "user", "content": "Hi?"}],
                   "chosen": [{"role": "assistant", "content": "Hello."}],
                   "rejected": [{"role": "assistant", "content": "Go away."}]}


@pytest.mark.parametrize("row, match", [
    ({"prompt": "x", "chosen": "y"}, "row 3, column 'rejected': expected a string"),
    ({"prompt": "x", "chosen": 5, "rejected": "z"}, "row 3, column 'chosen': expected a string"),
    ({"chosen": "y", "rejected": "z"}, "row 3: no prompt"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}],
      "rejected": "z"}, "column 'chosen': the last message has role 'user'"),
])
def test_bad_rows_name_row_and_column(row, match):
    with pytest.raises(DataError, match=match):
        to_explicit_prompt(row, 3, source="mine.jsonl")


def test_drop_overlong_splits_at_max_length_inclusive():
    ds = Dataset.from_dict({"pair_tokens": [10, 20, 30, 31]})
    kept, dropped = drop_overlong(ds, 30)
    assert kept["pair_tokens"] == [10, 20, 30] and dropped["pair_tokens"] == [31]


def test_subsample_is_seeded_and_capped():
    ds = Dataset.from_dict({"i": list(range(100))})
    assert subsample(ds, 10, seed=1)["i"] == subsample(ds, 10, seed=1)["i"]
    assert subsample(ds, 10, seed=1)["i"] != subsample(ds, 10, seed=2)["i"]
    assert len(subsample(ds, 500, seed=1)) == 100


def test_local_jsonl_and_unsupported_files(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert load_preference_split(str(path), "train")[0]["chosen"] == "b"
    bad = tmp_path / "pairs.csv"
    bad.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_preference_split(str(bad), "train")
    with pytest.raises(DataError, match="not a dataset file"):
        load_preference_split(str(tmp_path / "nope"), "train")


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("name, content, match", [
    ("empty.jsonl", b"  \n", "empty.jsonl: the file is empty"),
    ("broken.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen"\n',
     "broken.jsonl, line 2: invalid JSON line"),
    ("list.jsonl", b'["not", "an object"]\n', "list.jsonl, line 1: invalid JSON line"),
    ("latin1.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9"}\n',
     "latin1.jsonl, line 2: not UTF-8"),
    ("array.json", b'[{"prompt": "a",\n "chosen": }]', "array.json, line 2: invalid JSON"),
])
def test_unreadable_files_name_file_and_line(tmp_path, name, content, match):
    with pytest.raises(DataError, match=match):
        load_preference_split(write(tmp_path, name, content), "train")


def good(i):
    return {"prompt": f"q{i}", "chosen": f"right {i}", "rejected": f"wrong {i}"}


def test_a_minority_of_bad_rows_is_dropped_and_counted():
    from helpers.data import normalize_pairs
    rows = [good(i) for i in range(8)]
    rows[2] = {"prompt": "q", "chosen": "   ", "rejected": "x"}
    rows[5] = {"prompt": "q", "chosen": "same", "rejected": "same"}
    clean, report = normalize_pairs(Dataset.from_list(rows), source="mine.jsonl")
    assert len(clean) == 6 and report["dropped_bad_rows"] == 2
    assert report["reasons"] == {"column 'chosen': empty or whitespace-only answer": 1,
                                 "chosen identical to rejected (no preference to learn)": 1}
    assert report["examples"][0].startswith("mine.jsonl, row 2:")


def test_mostly_bad_rows_or_missing_columns_are_one_clear_error():
    from helpers.data import normalize_pairs
    def conversation(role):
        return [{"role": "user", "content": "q"}, {"role": role, "content": "a"}]
    bad_roles = [{"prompt": "q", "chosen": conversation("bot"), "rejected": conversation("assistant")}] * 3
    bad_roles += [{"prompt": "q", "chosen": conversation("assistant"),
                   "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}]
    with pytest.raises(DataError, match=r"3 of 4 rows are unusable.*unknown role\(s\) \['bot'\]"):
        normalize_pairs(Dataset.from_list(bad_roles), source="mine.jsonl")
    with pytest.raises(DataError, match=r"no column \['rejected'\]"):
        normalize_pairs(Dataset.from_list([{"prompt": "q", "chosen": "a"}]), source="mine.jsonl")


# ---- held-out sets by prompt (issue: a learner's single file had no held-out set) ------------------------------


def _pairs_file(tmp_path, n_prompts=200, copies=1):
    import json

    path = tmp_path / "my_pairs.jsonl"
    rows = [{"prompt": f"Question number {i}?", "chosen": f"Answer {i}.", "rejected": "No idea."}
            for i in range(n_prompts) for _ in range(copies)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_single_file_has_no_test_source_and_is_carved_by_prompt(tmp_path):
    from helpers.data import carve_by_prompt, load_preference_sources, normalize_pairs, split_key

    path = _pairs_file(tmp_path, copies=2)  # each prompt twice: both copies must land on the same side
    train, test, how = load_preference_sources(str(path), "train_prefs", "test_prefs")
    assert test is None and "carved" in how and "one split" in how
    pairs, _ = normalize_pairs(train, "my_pairs.jsonl")
    rest, held = carve_by_prompt(pairs, share=0.1, seed=0)
    rest_keys, held_keys = {split_key(p) for p in rest["prompt"]}, {split_key(p) for p in held["prompt"]}
    assert len(held_keys) == 20 and not rest_keys & held_keys and len(rest) + len(held) == 400
    again = carve_by_prompt(pairs, share=0.1, seed=0)[1]
    assert again["prompt"] == held["prompt"]  # deterministic from the seed
    assert carve_by_prompt(pairs, share=0.1, seed=1)[1]["prompt"] != held["prompt"]


def test_eval_split_can_name_a_second_file(tmp_path):
    from helpers.data import load_preference_sources

    train_path = _pairs_file(tmp_path)
    test_path = tmp_path / "held_out.jsonl"
    test_path.write_text('{"prompt": "New?", "chosen": "Yes.", "rejected": "No."}\n')
    train, test, how = load_preference_sources(str(train_path), "train", str(test_path))
    assert len(train) == 200 and len(test) == 1 and "held_out.jsonl" in how
    with pytest.raises(DataError, match="does not exist"):
        load_preference_sources(str(train_path), "train", str(tmp_path / "missing.jsonl"))


def test_a_saved_dataset_without_the_test_split_is_carved_and_one_with_it_is_used(tmp_path):
    from datasets import DatasetDict

    from helpers.data import load_preference_sources

    rows = Dataset.from_list([{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(10)])
    DatasetDict(train_prefs=rows).save_to_disk(str(tmp_path / "one"))
    DatasetDict(train_prefs=rows, test_prefs=rows.select(range(3))).save_to_disk(str(tmp_path / "two"))
    assert load_preference_sources(str(tmp_path / "one"), "train_prefs", "test_prefs")[1] is None
    assert len(load_preference_sources(str(tmp_path / "two"), "train_prefs", "test_prefs")[1]) == 3
    with pytest.raises(DataError, match="no split 'train'.*train_prefs"):
        load_preference_sources(str(tmp_path / "two"), "train", "test_prefs")


def test_offline_default_prompts_are_the_same_task_instance_whatever_the_wording():
    from helpers.data import drop_shared_prompts, split_key

    def p(text):
        return [{"role": "user", "content": text}]

    assert split_key(p("Sort ascending: 3 1 2")) == split_key(p("Arrange from smallest to largest: 3 1 2"))
    assert split_key(p("Sort ascending: 3 1 2")) != split_key(p("Sort ascending: 3 2 1"))
    assert split_key(p("Hello   there")) == split_key(p("Hello there"))
    # larger / smaller ask about a set of numbers: any order and any wording (pair or list) is one instance
    assert split_key(p("Which is larger, 7 or 3?")) == split_key(p("Pick the larger number: 3 or 7.")) \
        == split_key(p("Which is the largest of 3 7?"))
    assert split_key(p("Which is larger, 7 or 3?")) != split_key(p("Which is smaller, 7 or 3?"))
    train = Dataset.from_list([{"prompt": p("Which is larger, 7 or 3?")}, {"prompt": p("Which is larger, 2 or 9?")}])
    test = Dataset.from_list([{"prompt": p("Pick the larger number: 7 or 3.")}])
    kept, dropped = drop_shared_prompts(train, test)
    assert dropped == 1 and kept["prompt"] == [p("Which is larger, 2 or 9?")]


def test_carving_needs_two_distinct_prompts():
    from helpers.data import carve_by_prompt

    same = Dataset.from_list([{"prompt": [{"role": "user", "content": "x"}]}] * 5)
    with pytest.raises(DataError, match="1 distinct prompt"):
        carve_by_prompt(same, share=0.5, seed=0)
