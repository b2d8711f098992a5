"""Click parameter types shared by the commands: numbers that must be finite, counts with a
ceiling."""

from __future__ import annotations

import math
from typing import Any

import click

# More seeds than this is a typo, not an experiment (each one is a whole set of fits).
MAX_SEEDS = 1000


class FiniteFloat(click.FloatRange):
    """A float (optionally within a range) that is neither NaN nor infinite: click's FloatRange lets
    NaN through, since every comparison with NaN is false."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


SEEDS = click.IntRange(min=1, max=MAX_SEEDS)
