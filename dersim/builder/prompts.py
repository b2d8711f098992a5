"""Rendering what an expert sees: the question, and at later steps the Knowledge Transfer Prompt.

Following the paper, the KTP (holding the previous answer) comes after the question. Chat experts
receive the text as one user message; completion (base) experts get the recipe's few-shot prefix
and an `Answer:` cue. Placeholders are replaced literally, so braces in questions are harmless.
"""

from __future__ import annotations

from dersim.builder.backends.base import CallRequest
from dersim.builder.sources.question import Question
from dersim.recipe import ExpertSpec, PromptSpec


def user_message(prompt: PromptSpec, question: Question, previous_answer: str | None) -> str:
    """The question, followed by the KTP when there is a previous answer."""
    text = prompt.question_template.replace("{question}", question.text)
    if previous_answer is None:
        return text
    return text + "\n\n" + prompt.ktp_template.replace("{previous_answer}", previous_answer)


def render_request(
    prompt: PromptSpec,
    expert: ExpertSpec,
    question: Question,
    previous_answer: str | None,
    sample: int = 0,
) -> CallRequest:
    """The full call for `expert` on `question` after `previous_answer` (None at the root); a
    sampled expert's `sample`-th draw is seeded by its index."""
    text = user_message(prompt, question, previous_answer)
    if expert.prompt_format == "completion":
        text = f"{expert.few_shot}{text}\nAnswer:"
    return CallRequest(
        question=question,
        previous_answer=previous_answer,
        prompt=text,
        max_new_tokens=expert.max_new_tokens,
        stop=expert.stop,
        temperature=expert.temperature,
        top_p=expert.top_p,
        seed=sample,
    )
