"""Shards of a build: `--shard I/N` builds the questions whose id hashes to shard I of N.

Any job runner (a Slurm array, a Kubernetes indexed Job, a shell loop) starts the N builds; each
records in its manifest which shard it is and where its questions stand in the whole recipe's
question order, so `dersim cache merge` can join them into the cache a single build would write.
Episodes never cross questions, so nothing else couples shards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dersim.builder.sources.question import Question
from dersim.errors import DersimError


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'2/8' -> Shard(2, 8); a one-line error for anything else."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise DersimError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise DersimError(f"--shard {text}: expected 0 <= I < N")
        return cls(index, count)

    def holds(self, question_id: str) -> bool:
        """Whether the question with this id belongs to the shard (a hash of the id alone, so
        the assignment does not depend on the other questions)."""
        digest = hashlib.blake2b(question_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def select(self, questions: list[Question]) -> tuple[list[Question], list[int]]:
        """The shard's questions, in the recipe's order, and their positions in it."""
        kept = [(p, q) for p, q in enumerate(questions) if self.holds(q.question_id)]
        return [q for _, q in kept], [p for p, _ in kept]
