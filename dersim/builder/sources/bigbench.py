"""BIG-bench `task.json` files: strategyqa, elementary_math_qa and qa_wikidata.

Each task stores its answer differently; this module turns every example into a `Question` with a
free-text reference (for BERTScore), the accepted strings (for token F1 / ROUGE-L) and a label.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dersim.builder.sources.question import Question
from dersim.errors import DatasetError


def _correct_choice(example: dict[str, Any], where: str) -> str:
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or not scores:
        raise DatasetError(f"{where}: missing 'target_scores'")
    best = [k for k, v in scores.items() if v == 1]
    if len(best) != 1:
        raise DatasetError(f"{where}: 'target_scores' must mark exactly one choice with 1")
    return str(best[0])


def _strategyqa(example: dict[str, Any], where: str) -> tuple[str, tuple[str, ...], str]:
    target = example.get("target")
    if not isinstance(target, str) or not target.strip():
        raise DatasetError(f"{where}: missing text 'target'")
    return target.strip(), (target.strip(),), _correct_choice(example, where).lower()


def _elementary_math_qa(example: dict[str, Any], where: str) -> tuple[str, tuple[str, ...], str]:
    answer = _correct_choice(example, where).strip()
    return f"The answer is {answer}.", (answer,), answer


def _qa_wikidata(example: dict[str, Any], where: str) -> tuple[str, tuple[str, ...], str]:
    target = example.get("target")
    accepted = [target] if isinstance(target, str) else target
    if (
        not isinstance(accepted, list)
        or not accepted
        or not all(isinstance(t, str) for t in accepted)
    ):
        raise DatasetError(f"{where}: 'target' must be a string or a list of strings")
    return accepted[0], tuple(accepted), accepted[0]


_READERS = {
    "strategyqa": _strategyqa,
    "elementary_math_qa": _elementary_math_qa,
    "qa_wikidata": _qa_wikidata,
}


def read_bigbench(path: Path, task: str) -> list[Question]:
    """All examples of a BIG-bench task file, in file order, with ids `<task>-<index>`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: dataset file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise DatasetError(f"{path}: no 'examples' list (is this a BIG-bench task.json?)")
    reader = _READERS[task]
    questions = []
    for index, example in enumerate(examples):
        where = f"{path}: example {index}"
        if not isinstance(example, dict) or not isinstance(example.get("input"), str):
            raise DatasetError(f"{where}: missing text 'input'")
        reference, references, label = reader(example, where)
        questions.append(
            Question(f"{task}-{index:05d}", example["input"].strip(), reference, references, label)
        )
    return questions
