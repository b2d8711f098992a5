"""Reading a task's answer out of a free-text answer: the verdict of a yes/no answer, the final
number of a numeric one. The task metrics score by them (`dersim.builder.scoring`), and majority
votes over sampled answers count them (`dersim.cache.sampling`).
"""

from __future__ import annotations

import re

# "The answer is: **Yes**", "Answer: no" — an explicit verdict wins over an earlier stray yes/no.
_VERDICT = re.compile(r"\banswer\s*(?:is|would be|:)\s*[:\-\s*_\"'`]*\b(yes|no)\b", re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def yes_no(text: str) -> str | None:
    """The verdict of `text`: its explicit "answer is yes/no", else its first yes/no word, else
    None."""
    match = _VERDICT.search(text) or _YES_NO.search(text)
    return match.group(1).lower() if match else None


_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A number, optionally signed (a minus not glued to a preceding word or digit: "5-3" is 5 and 3),
# optionally a fraction or ratio "2 / 3", "1 : 4" (elementary_math_qa writes labels that way).
_NUMBER = re.compile(
    rf"(?:(?<![\w)])(?P<sign>[-\u2212]))?(?P<a>{_UNSIGNED})(?:\s*[/:]\s*(?P<b>{_UNSIGNED}))?"
)


def last_number(text: str) -> float | None:
    """The value of the last number in `text` ("1,000", "-2.5", "40 %" -> 40, "2 / 3" -> 0.667)."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    value = float(match["a"].replace(",", ""))
    if match["b"] is not None:
        denominator = float(match["b"].replace(",", ""))
        if denominator == 0.0:
            return None
        value /= denominator
    return -value if match["sign"] else value
