"""Task families of the embedded offline default, each with a programmatic checker.

The offline default stands in for UltraFeedback with short tasks whose right answer a program can
compute, so notebook 05 can measure an objective before/after ("did the greedy answer solve the
task?") instead of trusting a reward model. Each family has several wordings, a correct answer
(the *chosen* reply) and one consistent, plausible wrong behaviour (the *rejected* reply):

| family    | example prompt                          | chosen | rejected behaviour             |
|-----------|-----------------------------------------|--------|--------------------------------|
| `sort`    | Sort ascending: 5 2 9                   | 2 5 9  | sorts in the wrong order       |
| `count`   | How many numbers are in: 5 2 9?         | 3      | off by one                     |
| `larger`  | Which is larger, 7 or 3?                | 7      | verbose non-answer             |
|           | Which is the largest of 5 2 9?          | 9      |                                |
| `smaller` | Which is smaller, 7 or 3?               | 3      | echoes the choices: `7 or 3`   |
|           | Pick the smallest number in the list 5 2 9. | 2  | `5, 2 or 9`                    |
| `first`   | What is the first number in: 5 2 9?     | 5      | fixed evasive reply            |

A task *instance* is the family plus its operands, whatever the wording (`instance_key`): "Which is
larger, 7 or 3?" and "Pick the larger number: 3 or 7." are one instance; for `larger` and `smaller` the
numbers are an unordered set (the answer cannot depend on their order), for the other families the
list as written. The offline default keeps its held-out test instances out of training and
pretraining by this key, not by prompt text.

Operands are single digits, separated by spaces; the offline default's tokenizer gives every digit its own
token (the same id in the prompt and in the answer), so "find the largest" compares ten tokens (two-digit numbers
would be 90 more tokens whose order the model would have to memorise). `larger` / `smaller` ask about 2 to 4 digits: with pairs only (45 instances) a held-out
set of 10 pairs left 35 to learn from; sets of 2-4 digits give 375 instances.
(A `reverse the
letters` family was tried and dropped: a 2-layer model pretrained for ~2 minutes could neither
reverse nor echo letter sequences, so no preference tuning could make it succeed; single-digit
`add` stayed at 47-90% after ORPO (the tiny model never learns the addition table well); and a
`smaller` whose rejected answer was the larger number taught the model that "max" answers "which is
smaller", which leaked into `larger` after tuning; so was
`subtract` with a up to 19: ORPO reached only ~53% on held-out prompts; and `parity` of 0-99,
whose two-digit numbers BPE merges into single tokens, so parity became per-token memorisation.)
Used by `offline_default` (data generation) and notebook 05 (`check_answer`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

# Placeholders that wordings may use, and the regex each one parses back.
_SLOTS = {"digits": r"\d(?: \d)*", "a": r"\d+", "b": r"\d+"}


@dataclass(frozen=True)
class Family:
    """One task family: wordings with {placeholders}, a sampler, the solver and the wrong behaviour.

    `sample` returns the instance as {"digits": "5 2 9"}; a wording with {a} and {b} (a pair) is used only for
    two operands. `solve` and `reject` take a prompt's placeholder values (what `parse` returns): {"digits"} or
    {"a", "b"}."""

    name: str
    wordings: tuple[str, ...]
    sample: Callable[[random.Random], dict]  # {"digits": "5 2 9"}
    solve: Callable[[dict], str]  # the correct answer (chosen)
    reject: Callable[[dict], str]  # the consistent wrong behaviour (rejected)
    score_rejected: float  # UltraFeedback-style score of the rejected reply (chosen gets 9.0)
    unordered: bool = False  # the operands are a set: "7 or 3" is the same instance as "3 or 7"


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def _join(values) -> str:
    return " ".join(str(v) for v in values)


def operands(args: dict) -> list[int]:
    """A prompt's numbers in the order written, from {"digits": ...} or {"a": ..., "b": ...}."""
    return _ints(args["digits"]) if "digits" in args else [int(args["a"]), int(args["b"])]


def _listed(values: list[int], last: str) -> str:
    """[7, 3, 5] -> '7, 3 and 5' (last='and')."""
    return ", ".join(map(str, values[:-1])) + f" {last} {values[-1]}"


def _digits(low: int, high: int):
    """A sampler of `low`..`high` distinct digits in random order."""
    return lambda rng: {"digits": _join(rng.sample(range(10), rng.randint(low, high)))}


def _evasive_larger(args: dict) -> str:
    ops = operands(args)
    if len(ops) == 2:
        return f"Both {ops[0]} and {ops[1]} are numbers, and which one is larger depends on the context."
    return f"{_listed(ops, 'and')} are all numbers, and which one is largest depends on the context."


FAMILIES: tuple[Family, ...] = (
    Family(
        "sort",
        ("Sort ascending: {digits}", "Put these numbers in increasing order: {digits}",
         "Arrange from smallest to largest: {digits}"),
        _digits(3, 3),  # distinct digits, so that ascending and descending never coincide
        lambda a: _join(sorted(operands(a))),
        lambda a: _join(sorted(operands(a), reverse=True)),
        4.0,
    ),
    Family(
        "count",
        ("How many numbers are in: {digits}?", "Count the numbers in the list {digits}.",
         "How many numbers does this list have: {digits}?"),
        _digits(3, 6),
        lambda a: str(len(operands(a))),
        lambda a: str(len(operands(a)) + 1),  # off by one
        4.0,
    ),
    Family(
        "larger",
        ("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?", "Pick the larger number: {a} or {b}.",
         "Which is the largest of {digits}?", "Pick the largest number in the list {digits}.",
         "What is the largest number in: {digits}?"),
        _digits(2, 4),
        lambda a: str(max(operands(a))),
        _evasive_larger,  # a verbose non-answer
        2.0,
        unordered=True,
    ),
    Family(
        "smaller",
        ("Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?", "Pick the smaller number: {a} or {b}.",
         "Which is the smallest of {digits}?", "Pick the smallest number in the list {digits}.",
         "What is the smallest number in: {digits}?"),
        _digits(2, 4),
        lambda a: str(min(operands(a))),
        lambda a: _listed(operands(a), "or"),  # echoes the choices instead of choosing: "7 or 3", "7, 3 or 5"
        4.0,
        unordered=True,
    ),
    Family(
        "first",
        ("What is the first number in: {digits}?", "Name the first number of the list {digits}.",
         "Which number comes first in: {digits}?"),
        _digits(3, 4),
        lambda a: str(operands(a)[0]),
        lambda a: "Sorry, I cannot answer that.",  # a fixed evasive reply, whatever the list
        1.0,
    ),
)
TASK_FAMILIES: tuple[str, ...] = tuple(f.name for f in FAMILIES)
SCORE_CHOSEN = 9.0


def _wording_regex(wording: str) -> re.Pattern:
    """Turn 'Add {a} and {b}.' into a regex with named groups (one source of truth for both ways)."""
    parts = re.split(r"\{(\w+)\}", wording)  # literal, slot, literal, slot, ...
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for i, p in enumerate(parts))
    return re.compile(body)


_PATTERNS = [(fam, _wording_regex(w)) for fam in FAMILIES for w in fam.wordings]


def parse(prompt: str) -> tuple[Family, dict] | None:
    """The family and placeholder values of a prompt, or None (e.g. a real UltraFeedback prompt)."""
    for fam, pattern in _PATTERNS:
        match = pattern.fullmatch(prompt.strip())
        if match:
            return fam, match.groupdict()
    return None


def task_of(prompt: str) -> str | None:
    """The family name of a prompt, or None. Notebook 05 groups success rates by it."""
    parsed = parse(prompt)
    return parsed[0].name if parsed else None


def check_answer(prompt: str, answer: str) -> bool | None:
    """True/False whether `answer` solves `prompt` (only surrounding whitespace is forgiven); None
    if the prompt belongs to no family. Used by notebook 05 to score greedy generations."""
    parsed = parse(prompt)
    if parsed is None:
        return None
    fam, args = parsed
    return answer.strip() == fam.solve(args)


def instance_key_of(fam: Family, args: dict) -> str:
    """`instance_key` of a family and a prompt's placeholder values (what `parse` returns, or `Family.sample`)."""
    values = operands(args)
    return f"{fam.name}:{_join(sorted(values) if fam.unordered else values)}"


def instance_key(prompt: str) -> str | None:
    """The task instance a prompt asks for, canonical whatever the wording; None for a prompt of no family.

    `family:operands`, the operands as integers joined by single spaces, in the prompt's order, except for an
    unordered family (`larger`, `smaller`), whose numbers are sorted:
        "Sort ascending: 5 2 9"                      -> "sort:5 2 9"   ("Sort ascending: 2 5 9" is another)
        "Which is larger, 7 or 3?"                    -> "larger:3 7"
        "Pick the larger number: 3 or 7."             -> "larger:3 7"   (the same instance)
        "Which is the largest of 3 7?"                -> "larger:3 7"   (the same instance)
        "Which is smaller, 7 or 3?"                   -> "smaller:3 7"  (another family: another instance)
    Two prompts with the same key have the same right answer. The offline default draws its test instances
    first and keeps them out of training and pretraining by this key; `helpers.data.split_key` uses it to keep
    train / validation / test apart."""
    parsed = parse(prompt) if isinstance(prompt, str) else None
    return instance_key_of(*parsed) if parsed else None


def _fits(wording: str, n_operands: int) -> bool:
    return n_operands == 2 if "{a}" in wording else "{digits}" in wording


def make_example(fam: Family, rng: random.Random, args: dict | None = None) -> dict:
    """One example of a family: prompt, chosen, rejected, the family, the scores and the instance key.

    `args` ({"digits": ...}) fixes the instance; else one is sampled. An unordered family's numbers are put in a
    random order, so one instance comes in every wording that fits and in every order."""
    values = operands(fam.sample(rng) if args is None else args)
    if fam.unordered:
        rng.shuffle(values)
    wording = rng.choice([w for w in fam.wordings if _fits(w, len(values))])
    slots = dict(zip("ab", map(str, values))) if "{a}" in wording else {"digits": _join(values)}
    return {"prompt": wording.format(**slots), "chosen": fam.solve(slots), "rejected": fam.reject(slots),
            "task": fam.name, "score_rejected": fam.score_rejected, "instance": instance_key_of(fam, slots)}
