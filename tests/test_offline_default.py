"""The embedded offline default (offline_default): schema, checkers, determinism, held-out
task instances, the atomic cache, and (slow) the built base model itself."""

import hashlib
import json
from pathlib import Path

import pytest

from offline_default import build as od
from offline_default.tasks import FAMILIES, check_answer, instance_key

FIXTURE = Path(__file__).parent / "fixtures" / "ultrafeedback_features.json"


@pytest.fixture(scope="module")
def data():
    return od.build_preference_data(seed=0)


@pytest.fixture(scope="module")
def examples():
    return od.build_examples(seed=0)


@pytest.fixture(scope="module")
def tokenizer(examples):
    return od.train_tokenizer(od.tokenizer_training_texts(od.pretraining_conversations(examples)))


def expected_features():
    from datasets import Features

    # The card lists features in its YAML form; datasets reads cards with this same function.
    return Features._from_yaml_list(json.loads(FIXTURE.read_text())["features"])


def arrow_bytes(dataset_dict, tmp_path: Path) -> dict:
    dataset_dict.save_to_disk(str(tmp_path))
    return {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in sorted(tmp_path.rglob("*.arrow"))}


# ---------------------------------------------------------------- data
def test_schema_equals_ultrafeedback_binarized(data):
    assert set(data) == set(json.loads(FIXTURE.read_text())["splits"])
    for split in data.values():
        assert split.features == expected_features()
        assert list(split.features) == list(expected_features())  # same column order too


def test_rows_look_like_ultrafeedback(data):
    for split in data.values():
        for row in split:
            assert row["prompt_id"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
            assert row["messages"] == row["chosen"]
            assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["user", "assistant"]
            assert row["chosen"][0]["content"] == row["rejected"][0]["content"] == row["prompt"]
            assert row["score_chosen"] > row["score_rejected"]
        assert len(set(split["prompt"])) == len(split)  # no duplicate prompts within a split


def test_checker_accepts_every_chosen_and_rejects_every_rejected(data):
    for split in data.values():
        for row in split:
            assert check_answer(row["prompt"], row["chosen"][1]["content"]) is True, row["prompt"]
            assert check_answer(row["prompt"], row["rejected"][1]["content"]) is False, row["prompt"]


def test_held_out_prompts_never_appear_in_training_or_pretraining_text(data, examples, tokenizer):
    test_prompts = set(data["test_prefs"]["prompt"])
    assert test_prompts.isdisjoint(data["train_prefs"]["prompt"])
    assert test_prompts.isdisjoint(ex["prompt"] for ex in examples["pretrain"])
    # The rendered text too (as a whole user turn: "Sort: 5 2 9" is a prefix of "Sort: 5 2 9 1").
    pretraining_text = "\n".join(tokenizer.apply_chat_template(c, tokenize=False)
                                 for c in od.pretraining_conversations(examples))
    for prompt in test_prompts:
        assert f"### User:\n{prompt}\n\n" not in pretraining_text, prompt


def _all_prompts_of(key: str) -> list[str]:
    """Every prompt of an instance: each wording that fits, and for larger/smaller every order of the numbers."""
    import itertools

    name, numbers = key.split(":")
    fam = next(f for f in FAMILIES if f.name == name)
    orders = itertools.permutations(numbers.split()) if fam.unordered else [numbers.split()]
    return [w.format(a=order[0], b=order[1]) if "{a}" in w else w.format(digits=" ".join(order))
            for order in orders for w in fam.wordings if ("{a}" not in w or len(order) == 2)]


def test_no_test_instance_occurs_in_training_or_pretraining(data, examples, tokenizer):
    test_keys = {instance_key(p) for p in data["test_prefs"]["prompt"]}
    assert None not in test_keys
    for name, prompts in (("train_prefs", data["train_prefs"]["prompt"]),
                          ("pretraining", [ex["prompt"] for ex in examples["pretrain"]])):
        shared = test_keys & {instance_key(p) for p in prompts}
        assert not shared, (name, sorted(shared)[:5])
    # Independently of instance_key: no wording or order of a test instance is a training or pretraining prompt,
    # and none is a user turn of the rendered pretraining text.
    seen = set(data["train_prefs"]["prompt"]) | {ex["prompt"] for ex in examples["pretrain"]}
    variants = [p for key in test_keys for p in _all_prompts_of(key)]
    assert set(data["test_prefs"]["prompt"]) <= set(variants)  # the enumeration covers what the build wrote
    assert not seen & set(variants), sorted(seen & set(variants))[:5]
    pretraining_text = "\n".join(tokenizer.apply_chat_template(c, tokenize=False)
                                 for c in od.pretraining_conversations(examples))
    for prompt in variants:
        assert f"### User:\n{prompt}\n\n" not in pretraining_text, prompt


def test_test_split_has_every_family_and_enough_distinct_instances(data, examples):
    from collections import Counter

    tasks = Counter(ex["task"] for ex in examples["test"])
    assert tasks == {f.name: od.N_TEST for f in FAMILIES}
    for fam in FAMILIES:
        keys = Counter(ex["instance"] for ex in examples["test"] if ex["task"] == fam.name)
        assert len(keys) == od.N_TEST_INSTANCES[fam.name]
        assert set(keys.values()) == {od.N_TEST // od.N_TEST_INSTANCES[fam.name]}  # balanced
    assert len(data["train_prefs"]) == sum(od.N_TRAIN.values()) >= 1100  # notebook 02 keeps 1000 + 100 validation


def test_pretraining_shows_both_replies_and_the_rejected_one_more_often(examples):
    import math
    from collections import Counter

    conversations = od.pretraining_conversations(examples)
    shown = Counter((c[0]["content"], c[1]["content"]) for c in conversations)
    pretrain = examples["pretrain"]
    assert all(shown[ex["prompt"], ex["chosen"]] == 1 for ex in pretrain)
    low, high = math.floor(od.REJECTED_PER_CHOSEN), math.ceil(od.REJECTED_PER_CHOSEN)
    assert all(low <= shown[ex["prompt"], ex["rejected"]] <= high for ex in pretrain)
    assert len(conversations) == len(pretrain) + math.floor(od.REJECTED_PER_CHOSEN * len(pretrain))
    assert od.REJECTED_PER_CHOSEN >= 1  # the base leans to the wrong behaviour, never to the right one
    assert {ex["prompt"] for ex in examples["train"]} <= {ex["prompt"] for ex in pretrain}


def test_same_seed_gives_byte_identical_data_other_seed_differs(data, examples, tmp_path):
    again = arrow_bytes(od.build_preference_data(seed=0), tmp_path / "again")
    assert arrow_bytes(data, tmp_path / "first") == again
    assert arrow_bytes(od.build_preference_data(seed=1), tmp_path / "other") != again
    # Train, test and pretraining examples alike (the pretraining text decides the tokenizer and the model).
    assert od.examples_sha256(od.build_examples(seed=0)) == od.examples_sha256(examples)
    assert od.examples_sha256(od.build_examples(seed=1)) != od.examples_sha256(examples)


def test_the_model_build_runs_with_a_pinned_floating_point_path():
    import torch

    env = od.pinned_environment()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" == str(od.BUILD_THREADS)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2"


def test_same_seed_gives_identical_weights_in_one_process(tmp_path, monkeypatch):
    """The model build (shortened to 30 steps) twice: identical weights, files and build_info fingerprints."""
    import torch

    monkeypatch.setattr(od, "PRETRAIN", {**od.PRETRAIN, "steps": 30, "warmup": 5})
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        for name in ("a", "b"):
            od._build_model(tmp_path / name, seed=0, verbose=False)
    finally:
        torch.set_num_threads(threads), torch.use_deterministic_algorithms(deterministic)
    infos = [json.loads((tmp_path / name / "build_info.json").read_text()) for name in ("a", "b")]
    assert infos[0]["weights_sha256"] == infos[1]["weights_sha256"]
    assert infos[0]["examples_sha256"] == infos[1]["examples_sha256"]
    assert infos[0]["determinism"]["threads"] == 1 and infos[0]["determinism"]["deterministic_algorithms"]
    files = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("a", "b")]
    assert files[0] == files[1]


# ---------------------------------------------------------------- tokenizer
def test_same_texts_give_identical_tokenizer_and_ids(examples, tokenizer):
    again = od.train_tokenizer(od.tokenizer_training_texts(od.pretraining_conversations(examples)))
    assert again.get_vocab() == tokenizer.get_vocab()
    texts = [ex["prompt"] + " " + ex["rejected"] for ex in examples["test"]]
    assert again(texts)["input_ids"] == tokenizer(texts)["input_ids"]


def test_a_digit_is_one_and_the_same_token_in_the_prompt_and_in_the_answer(tokenizer):
    """Copying a digit from the prompt into the answer is copying a token (plain byte-level BPE had " 5" in the
    prompt and "5" in the answer: two unrelated ids)."""
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    assert tokenizer.unk_token_id not in digit_ids and len(set(digit_ids)) == 10
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Sort ascending: 5 2 9 10"},
                                          {"role": "assistant", "content": "2 5 9"}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    numbers = [i for i in ids if i in digit_ids]
    assert [digit_ids.index(i) for i in numbers] == [5, 2, 9, 1, 0, 2, 5, 9]  # "10" is two digit tokens too
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<s>", "").replace("</s>", "")


def test_chat_template_gives_exactly_one_bos_and_one_eos(examples, tokenizer):
    ex = examples["test"][0]
    messages = [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex["chosen"]}]
    # TRL tokenizes the rendered conversation with add_special_tokens=False.
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1 and ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith(f"### Assistant:\n{ex['chosen']}")
    # Like Mistral's tokenizer: plain text gets a BOS (and no EOS) by default.
    assert tokenizer("hello")["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer.pad_token_id not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)


def test_longest_pair_fits_the_tiny_profile(examples, tokenizer):
    lengths = [len(tokenizer(tokenizer.apply_chat_template(
        [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex[key]}], tokenize=False),
        add_special_tokens=False)["input_ids"]) for ex in examples["test"] + examples["train"] for key in ("chosen", "rejected")]
    assert max(lengths) <= 64


# ---------------------------------------------------------------- the atomic cache
def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    def broken(out):
        (out / "half-written").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        od._atomic_build(tmp_path / "model", broken)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_builder_that_finished_first_wins(tmp_path):
    final = tmp_path / "model"

    def racing(out):
        (out / "mine").write_text("x")
        final.mkdir()  # another process renames its finished build into place meanwhile
        (final / "theirs").write_text("x")

    od._atomic_build(final, racing)
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    od._atomic_build(final, lambda out: pytest.fail("a finished build must not be rebuilt"))


def test_resolve_passes_hub_ids_through():
    assert od.resolve("mistralai/Mistral-7B-v0.1") == "mistralai/Mistral-7B-v0.1"
    assert od.OFFLINE_MODEL_ID == "offline:tiny-mistral" and od.OFFLINE_DATASET_ID == "offline:ultrafeedback-tiny"


# ---------------------------------------------------------------- the built model (slow)
@pytest.fixture(scope="session")
def offline_default():
    """Built once per session (about 5 minutes on a 2-core CPU, then cached on disk)."""
    return od.ensure_offline_default(seed=0)


@pytest.mark.slow
def test_build_info_records_what_decides_the_bits(offline_default):
    info = offline_default.build_info
    assert info["build_version"] == od.BUILD_VERSION and len(info["weights_sha256"]) == 64
    assert info["examples_sha256"] == od.examples_sha256(od.build_examples(seed=0))
    assert info["determinism"]["environment"] == {**dict.fromkeys(info["determinism"]["environment"]),
                                                  **od.pinned_environment()}
    assert info["determinism"]["threads"] == 1 and info["determinism"]["deterministic_algorithms"] is True


@pytest.mark.slow
def test_dataset_loads_from_disk_with_the_schema(offline_default):
    from datasets import load_from_disk

    data = load_from_disk(str(offline_default.dataset_dir))
    assert set(data) == {"train_prefs", "test_prefs"}
    assert data["train_prefs"].features == expected_features()


@pytest.mark.slow
def test_base_model_knows_both_behaviours_and_leaves_room_to_improve(offline_default):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(offline_default.model_dir)
    model = AutoModelForCausalLM.from_pretrained(offline_default.model_dir)
    test = load_from_disk(str(offline_default.dataset_dir))["test_prefs"]
    answers = od.greedy_answers(model, tokenizer, test["prompt"])
    success = sum(check_answer(p, a) for p, a in zip(test["prompt"], answers)) / len(test)
    # Room to improve: the pretraining text shows the rejected reply twice as often as the chosen one. Measured
    # 13.3% / 18.0% / 14.7% for seeds 0-2 (v10). Not a broken model: nearly every greedy answer (92.7% / 96.0% /
    # 100% measured) is exactly the chosen or the rejected reply, also on these unseen task instances.
    assert 0.05 <= success <= 0.5, success
    known = [a.strip() in (row["chosen"][1]["content"], row["rejected"][1]["content"]) for a, row in zip(answers, test)]
    assert sum(known) / len(known) >= 0.85
    assert success == pytest.approx(offline_default.build_info["base_greedy_success_test"])


@pytest.mark.slow
def test_model_loads_in_4bit_like_the_hub_model(offline_default):
    import torch
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(offline_default.model_dir)
    model = AutoModelForCausalLM.from_pretrained(offline_default.model_dir, quantization_config=bnb)
    assert type(model).__name__ == "MistralForCausalLM" and model.config.model_type == "mistral"
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 7 * model.config.num_hidden_layers
    assert tokenizer.chat_template and tokenizer.pad_token == "<pad>"
    assert len(od.greedy_answers(model, tokenizer, ["What is 3 plus 4?"], max_new_tokens=4)) == 1
