"""Answer checkers for the benign skills of the starter world (and any short-answer task).

Rule used by ``check_answer``: both strings are normalised (lower-case, ``*`` and
backticks removed, whitespace collapsed). The *candidate* is taken from the output:

* if the output contains "the answer is", the text after its first occurrence up to the
  first sentence end (``.``, ``!``, ``?``, ``,``, ``;`` or newline);
* otherwise the first line of the output.

Trailing punctuation and surrounding quotes are stripped from the candidate. The output
is correct when the candidate equals the expected answer, either exactly or with all
spaces removed (so "tac" matches "t a c"). Anything else, including extra words in the
candidate, is wrong: a model must state the answer, not merely mention it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

ANSWER_MARKER = "the answer is"
_CLAUSE_END = re.compile(r"[.!?,;\n]")
_STRIP_CHARS = " \t\"'.!?,;:"


def _normalize(text: str) -> str:
    text = text.lower().replace("*", "").replace("`", "")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def extract_answer(output: str) -> str:
    """The candidate answer stated in a model output (see the module docstring)."""
    norm = _normalize(output or "")
    pos = norm.find(ANSWER_MARKER)
    if pos >= 0:
        rest = norm[pos + len(ANSWER_MARKER) :].lstrip(" :")
        candidate = _CLAUSE_END.split(rest, maxsplit=1)[0]
    else:
        candidate = norm.split("\n", 1)[0]
    return candidate.strip(_STRIP_CHARS)


def check_answer(skill: str, answer: str, output: str) -> bool:
    """True if ``output`` states ``answer``; ``skill`` is accepted for future per-skill rules."""
    del skill  # one rule serves every current skill
    expected = _normalize(answer).strip(_STRIP_CHARS)
    candidate = extract_answer(output)
    if not expected or not candidate:
        return False
    return candidate == expected or candidate.replace(" ", "") == expected.replace(" ", "")


def skill_accuracy(rows: Iterable[Mapping[str, str]]) -> float:
    """Share of rows (dicts with skill, answer, output) answered correctly; 0.0 if none."""
    results = [check_answer(r["skill"], r["answer"], r["output"]) for r in rows]
    return sum(results) / len(results) if results else 0.0
