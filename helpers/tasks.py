"""Task families of the embedded offline default, each with a programmatic checker.

The offline default stands in for UltraFeedback with short tasks whose right answer a program can
compute, so notebook 05 can measure an objective before/after ("did the greedy answer solve the
task?") instead of trusting a reward model. Each family has several wordings, a correct answer
(the *chosen* reply) and one consistent, plausible wrong behaviour (the *rejected* reply):

| family    | example prompt                        | chosen | rejected behaviour          |
|-----------|---------------------------------------|--------|-----------------------------|
| `sort`    | Sort ascending: 5 2 9                 | 2 5 9  | sorts in the wrong order    |
| `count`   | How many numbers are in: 5 2 9?       | 3      | off by one                  |
| `larger`  | Which is larger, 7 or 3?              | 7      | verbose non-answer          |
| `smaller` | Which is smaller, 7 or 3?             | 3      | echoes the input: `7 or 3`  |
| `first`   | What is the first number in: 5 2 9?   | 5      | fixed evasive reply         |

Digits are separated by spaces so that a small byte-level BPE keeps them apart. (A `reverse the
letters` family was tried and dropped: a 2-layer model pretrained for ~2 minutes could neither
reverse nor echo letter sequences, so no preference tuning could make it succeed; single-digit
`add` stayed at 47-90% after ORPO (the tiny model never learns the addition table well); and a
`smaller` whose rejected answer was the larger number taught the model that "max" answers "which is
smaller", which leaked into `larger` after tuning; so was
`subtract` with a up to 19: ORPO reached only ~53% on held-out prompts; and `parity` of 0-99,
whose two-digit numbers BPE merges into single tokens, so parity became per-token memorisation.)
Used by `helpers.offline_default` (data generation) and notebook 05 (`check_answer`).
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
    """One task family: wordings with {placeholders}, a sampler, the solver and the wrong behaviour."""

    name: str
    wordings: tuple[str, ...]
    sample: Callable[[random.Random], dict]  # placeholder -> string value
    solve: Callable[[dict], str]  # the correct answer (chosen)
    reject: Callable[[dict], str]  # the consistent wrong behaviour (rejected)
    score_rejected: float  # UltraFeedback-style score of the rejected reply (chosen gets 9.0)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def _join(values) -> str:
    return " ".join(str(v) for v in values)


FAMILIES: tuple[Family, ...] = (
    Family(
        "sort",
        ("Sort ascending: {digits}", "Put these numbers in increasing order: {digits}",
         "Arrange from smallest to largest: {digits}"),
        # Distinct digits, so that ascending and descending never coincide.
        lambda rng: {"digits": _join(rng.sample(range(10), 3))},
        lambda a: _join(sorted(_ints(a["digits"]))),
        lambda a: _join(sorted(_ints(a["digits"]), reverse=True)),
        4.0,
    ),
    Family(
        "count",
        ("How many numbers are in: {digits}?", "Count the numbers in the list {digits}.",
         "How many numbers does this list have: {digits}?"),
        lambda rng: {"digits": _join(rng.sample(range(10), rng.randint(3, 6)))},
        lambda a: str(len(a["digits"].split())),
        lambda a: str(len(a["digits"].split()) + 1),  # off by one
        4.0,
    ),
    Family(
        "larger",
        ("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?",
         "Pick the larger number: {a} or {b}."),
        lambda rng: dict(zip("ab", map(str, rng.sample(range(10), 2)))),
        lambda a: str(max(int(a["a"]), int(a["b"]))),
        lambda a: f"Both {a['a']} and {a['b']} are numbers, and which one is larger depends on the context.",
        2.0,
    ),
    Family(
        "smaller",
        ("Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?", "Pick the smaller number: {a} or {b}."),
        lambda rng: dict(zip("ab", map(str, rng.sample(range(10), 2)))),
        lambda a: str(min(int(a["a"]), int(a["b"]))),
        lambda a: f"{a['a']} or {a['b']}",  # echoes the input instead of choosing
        4.0,
    ),
    Family(
        "first",
        ("What is the first number in: {digits}?", "Name the first number of the list {digits}.",
         "Which number comes first in: {digits}?"),
        lambda rng: {"digits": _join(rng.sample(range(10), rng.randint(3, 4)))},
        lambda a: a["digits"].split()[0],
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


def make_example(fam: Family, rng: random.Random) -> dict:
    """One task instance of a family: prompt, chosen, rejected, the family and the scores."""
    args = fam.sample(rng)
    return {"prompt": rng.choice(fam.wordings).format(**args), "chosen": fam.solve(args),
            "rejected": fam.reject(args), "task": fam.name, "score_rejected": fam.score_rejected}
