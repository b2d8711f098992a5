"""Question sources and the deterministic train/test split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dersim.builder.sources.bigbench import read_bigbench
from dersim.builder.sources.question import Question
from dersim.builder.sources.synthetic import generate_questions
from dersim.builder.sources.table import read_table
from dersim.errors import DatasetError
from dersim.recipe import DatasetSpec


def split_sizes(train: int, test: int, limit: int | None) -> tuple[int, int]:
    """Cap train+test at `limit`, keeping the recipe's train:test proportion (at least one of each
    when the recipe asks for both and the limit allows)."""
    if limit is None or limit >= train + test:
        return train, test
    n_test = round(limit * test / (train + test))
    if test and limit >= 2:
        n_test = max(n_test, 1)
    if train and limit >= 2:
        n_test = min(n_test, limit - 1)
    return limit - n_test, n_test


def load_questions(spec: DatasetSpec, limit: int | None = None) -> list[Question]:
    """The recipe's questions with `split` set: a seeded permutation picks train then test.

    Question ids come from the source, so a build with `--limit` reuses the calls of a smaller one.
    """
    if spec.source == "synthetic":
        every = generate_questions(spec.topics, spec.train + spec.test, spec.seed)
    else:
        every = (
            read_bigbench(spec.path, spec.task)
            if spec.source == "bigbench"
            else read_table(spec.path, spec.columns)
        )
    if spec.train + spec.test > len(every):
        raise DatasetError(
            f"{spec.path}: the recipe asks for {spec.train} train + {spec.test} test questions "
            f"but the file has {len(every)}"
        )
    order = np.random.default_rng(spec.seed).permutation(len(every))
    n_train, n_test = split_sizes(spec.train, spec.test, limit)
    train = [replace(every[i], split="train") for i in order[:n_train]]
    test = [replace(every[i], split="test") for i in order[spec.train : spec.train + n_test]]
    return train + test
