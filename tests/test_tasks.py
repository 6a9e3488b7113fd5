"""The task families' checkers (helpers.tasks): right answers pass, plausible wrong ones fail."""

import random

import pytest

from helpers.tasks import FAMILIES, TASK_FAMILIES, _wording_regex, check_answer, make_example, task_of

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
