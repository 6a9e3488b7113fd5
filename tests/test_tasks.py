"""The task families' checkers (offline_default.tasks): right answers pass, plausible wrong ones fail."""

import random

import pytest

from offline_default.tasks import FAMILIES, TASK_FAMILIES, _wording_regex, check_answer, instance_key, make_example, task_of

# (prompt, right answer, wrong answers): each wrong answer is a behaviour a model might show.
CASES = [
    ("Which is smaller, 7 or 3?", "3", ["7", "7 or 3", "3 or 7", "-3"]),
    ("Pick the smaller number: 2 or 8.", "2", ["8", "2."]),
    ("Sort ascending: 5 2 9", "2 5 9", ["9 5 2", "5 2 9", "2 5", "2 5 9 9", "259", "2  5 9", "2 5 9."]),
    ("Put these numbers in increasing order: 3 0 7 1", "0 1 3 7", ["7 3 1 0", "0 1 3"]),
    ("How many numbers are in: 5 2 9?", "3", ["4", "2", "5 2 9", "three"]),
    ("Count the numbers in the list 3 0 7 1 8 6.", "6", ["7", "5", "6."]),
    ("Which is larger, 7 or 3?", "7", ["3", "7 or 3", "Both 7 and 3 are numbers, and which one is larger depends on the context."]),
    ("Pick the larger number: 2 or 8.", "8", ["2", "8."]),
    ("What is the first number in: 5 2 9?", "5", ["9", "2", "5 2 9", "Sorry, I cannot answer that."]),
    ("Which number comes first in: 3 0 7 1?", "3", ["1", "0", "3."]),
    ("Which is the largest of 5 2 9?", "9", ["5", "2", "5 2 9",
                                              "5, 2 and 9 are all numbers, and which one is largest depends on the context."]),
    ("What is the largest number in: 4 1?", "4", ["1", "4 1"]),
    ("Pick the smallest number in the list 5 2 9 7.", "2", ["5, 2, 9 or 7", "9", "2 5 7 9", "2."]),
]


def test_at_least_five_families_with_three_wordings_each():
    assert len(TASK_FAMILIES) >= 5 and len(set(TASK_FAMILIES)) == len(TASK_FAMILIES)
    assert all(len(set(f.wordings)) >= 3 for f in FAMILIES)


@pytest.mark.parametrize("prompt,right,wrongs", CASES, ids=[c[0] for c in CASES])
def test_checker_accepts_right_and_rejects_wrong(prompt, right, wrongs):
    assert check_answer(prompt, right) is True
    assert check_answer(prompt, f"  {right}\n") is True  # surrounding whitespace only is forgiven
    for wrong in wrongs:
        assert check_answer(prompt, wrong) is False, wrong


def test_every_family_appears_in_the_cases():
    assert {task_of(prompt) for prompt, _, _ in CASES} == set(TASK_FAMILIES)


@pytest.mark.parametrize("fam", FAMILIES, ids=TASK_FAMILIES)
def test_generated_examples_round_trip(fam):
    rng = random.Random(0)
    wordings_seen = set()
    for _ in range(200):
        ex = make_example(fam, rng)
        wordings_seen |= {w for w in fam.wordings if _wording_regex(w).fullmatch(ex["prompt"])}
        assert task_of(ex["prompt"]) == fam.name
        assert check_answer(ex["prompt"], ex["chosen"]) is True
        assert check_answer(ex["prompt"], ex["rejected"]) is False
        assert ex["chosen"] != ex["rejected"]
    assert wordings_seen == set(fam.wordings)  # every wording gets sampled


@pytest.mark.parametrize("prompt", [
    "Write a short poem about the sea.",
    "How do I bake bread?",
    "Sort ascending: 5, 2, 9",  # outside the family's format
    "What is 3 plus 4? Explain.",
    "",
])
def test_other_prompts_belong_to_no_family(prompt):
    assert task_of(prompt) is None
    assert check_answer(prompt, "7") is None


# ---------------------------------------------------------------- task instances (what "held out" means)
def _format(wording: str, numbers: list[str]) -> str:
    """A wording filled with these numbers (a pair wording takes exactly two)."""
    if "{a}" in wording:
        return wording.format(a=numbers[0], b=numbers[1])
    return wording.format(digits=" ".join(numbers))


OPERANDS = {"sort": "5 2 9", "count": "5 2 9 0", "larger": "7 3", "smaller": "7 3", "first": "5 2 9"}
EXPECTED_KEY = {"sort": "sort:5 2 9", "count": "count:5 2 9 0", "larger": "larger:3 7", "smaller": "smaller:3 7",
                "first": "first:5 2 9"}


@pytest.mark.parametrize("fam", FAMILIES, ids=TASK_FAMILIES)
def test_instance_key_is_the_same_in_every_wording(fam):
    for wording in fam.wordings:
        assert instance_key(_format(wording, OPERANDS[fam.name].split())) == EXPECTED_KEY[fam.name], wording


@pytest.mark.parametrize("fam", [f for f in FAMILIES if f.unordered], ids=lambda f: f.name)
def test_an_unordered_set_is_one_instance_in_any_order_and_wording(fam):
    import itertools

    keys = {instance_key(_format(w, list(order))) for w in fam.wordings for order in (("7", "3"), ("3", "7"))}
    assert keys == {f"{fam.name}:3 7"}
    lists = [w for w in fam.wordings if "{a}" not in w]
    keys = {instance_key(_format(w, list(order))) for w in lists for order in itertools.permutations("592")}
    assert keys == {f"{fam.name}:2 5 9"}
    assert instance_key(_format(fam.wordings[0], ["7", "2"])) != f"{fam.name}:3 7"
    assert instance_key(_format(lists[0], ["7", "3", "1"])) != f"{fam.name}:3 7"  # a superset is another instance


def test_order_matters_for_list_families_and_the_family_is_part_of_the_key():
    assert {f.name for f in FAMILIES if f.unordered} == {"larger", "smaller"}
    assert instance_key("Sort ascending: 3 1 2") != instance_key("Sort ascending: 3 2 1")
    assert instance_key("What is the first number in: 3 1 2?") != instance_key("What is the first number in: 1 3 2?")
    assert instance_key("Which is larger, 7 or 3?") != instance_key("Which is smaller, 7 or 3?")
    assert instance_key("How many numbers are in: 5 2 9?") != instance_key("Sort ascending: 5 2 9")
    assert instance_key("  Which is larger, 7 or 3?\n") == "larger:3 7"  # surrounding whitespace, as `parse`


@pytest.mark.parametrize("prompt", ["Write a short poem about the sea.", "Sort ascending: 5, 2, 9", "", None, 7])
def test_prompts_of_no_family_have_no_instance_key(prompt):
    assert instance_key(prompt) is None


@pytest.mark.parametrize("fam", FAMILIES, ids=TASK_FAMILIES)
def test_examples_carry_their_instance_key_and_same_key_means_same_answer(fam):
    rng, answers = random.Random(1), {}
    for _ in range(300):
        ex = make_example(fam, rng)
        assert ex["instance"] == instance_key(ex["prompt"])
        assert answers.setdefault(ex["instance"], ex["chosen"]) == ex["chosen"]


@pytest.mark.parametrize("numbers,n_prompts", [("7 3", 6 * 2), ("7 3 5", 3 * 6)])
def test_an_instance_can_be_asked_in_every_wording_and_order_that_fits(numbers, n_prompts):
    fam = next(f for f in FAMILIES if f.name == "larger")
    rng = random.Random(0)
    prompts = {make_example(fam, rng, {"digits": numbers})["prompt"] for _ in range(500)}
    assert len(prompts) == n_prompts and {instance_key(p) for p in prompts} == {instance_key(f"Which is the largest of {numbers}?")}
