"""The embedded offline default (helpers.offline_default): schema, checkers, determinism, held-out
prompts, the atomic cache, and (slow) the built base model itself."""

import hashlib
import json
from pathlib import Path

import pytest

from helpers import offline_default as od
from helpers.tasks import check_answer

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


def test_pretraining_shows_chosen_and_rejected_equally_often(examples):
    conversations = od.pretraining_conversations(examples)
    replies = [c[1]["content"] for c in conversations]
    assert replies[0::2] == [ex["chosen"] for ex in examples["pretrain"]]
    assert replies[1::2] == [ex["rejected"] for ex in examples["pretrain"]]
    assert {ex["prompt"] for ex in examples["train"]} <= {ex["prompt"] for ex in examples["pretrain"]}


def test_same_seed_gives_byte_identical_data_other_seed_differs(data, tmp_path):
    again = arrow_bytes(od.build_preference_data(seed=0), tmp_path / "again")
    assert arrow_bytes(data, tmp_path / "first") == again
    assert arrow_bytes(od.build_preference_data(seed=1), tmp_path / "other") != again


# ---------------------------------------------------------------- tokenizer
def test_same_texts_give_identical_tokenizer_and_ids(examples, tokenizer):
    again = od.train_tokenizer(od.tokenizer_training_texts(od.pretraining_conversations(examples)))
    assert again.get_vocab() == tokenizer.get_vocab()
    texts = [ex["prompt"] + " " + ex["rejected"] for ex in examples["test"]]
    assert again(texts)["input_ids"] == tokenizer(texts)["input_ids"]


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
    """Built once per session (about 3 minutes on a 2-core CPU, then cached on disk)."""
    return od.ensure_offline_default(seed=0)


@pytest.mark.slow
def test_dataset_loads_from_disk_with_the_schema(offline_default):
    from datasets import load_from_disk

    data = load_from_disk(str(offline_default.dataset_dir))
    assert set(data) == {"train_prefs", "test_prefs"}
    assert data["train_prefs"].features == expected_features()


@pytest.mark.slow
def test_base_model_greedy_success_leaves_room_to_improve(offline_default):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(offline_default.model_dir)
    model = AutoModelForCausalLM.from_pretrained(offline_default.model_dir)
    prompts = load_from_disk(str(offline_default.dataset_dir))["test_prefs"]["prompt"]
    success = od.greedy_task_success(model, tokenizer, prompts)
    # Room to improve, yet not a broken model. Measured 23-51% over seeds 0-2: the fixed rejected replies are
    # near-deterministic, so greedy decoding picks them more often than half the time (PITFALLS 29).
    assert 0.15 <= success <= 0.65, success


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
