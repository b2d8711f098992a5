"""Generated yes/no questions of known kinds: the questions of synthetic caches whose best routes
are known.

Each question names its kind (a topic word) first, then a few filler words from a fixed made-up
vocabulary, so the kind is visible in any embedding of the text while the rest of it differs from
question to question: a router has to learn which words matter. Synthetic experts with `topics`
skills (`dersim.builder.backends.synthetic`) then make the best route a known function of the
kind. Labels are seeded coin flips; the reference is the label alone, so answers are one word.
"""

from __future__ import annotations

import itertools

import numpy as np

from dersim.builder.sources.question import Question

SYLLABLES = ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu")
VOCABULARY = tuple(
    "".join(parts) for parts in itertools.product(SYLLABLES, repeat=3)
)  # 512 made-up words
FILLER_WORDS = 6


def generate_questions(topics: tuple[str, ...], count: int, seed: int) -> list[Question]:
    """`count` questions, the topics in turn, each with seeded filler words and a seeded Yes/No
    label."""
    rng = np.random.default_rng(seed)
    questions = []
    for index in range(count):
        filler = " ".join(VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), FILLER_WORDS))
        label = "Yes" if rng.random() < 0.5 else "No"
        topic = topics[index % len(topics)]
        questions.append(
            Question(
                question_id=f"synthetic-{index}",
                text=f"{topic} question {index}: is {filler} true?",
                reference=label,
                references=(label,),
                label=label,
            )
        )
    return questions
