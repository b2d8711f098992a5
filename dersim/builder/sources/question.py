"""The question record every data source produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One question with its reference answer(s).

    `reference` is the text BERTScore compares against; `references` lists every accepted answer
    (token F1 and ROUGE-L take the best); `label` is the task label (yes/no, a number) or "".
    """

    question_id: str
    text: str
    reference: str
    references: tuple[str, ...]
    label: str
    split: str = ""
