"""A comparison as results: the terminal table, routers.md, routers.json and curves.parquet.

Every figure is shown as `mean [95% CI]`, followed by `±std` over seeds for stochastic routers;
`never` marks a target a curve does not reach, `n/a` an undefined figure. Rows that read the
reference answer are marked (`uses ref.`) and listed after the deployable ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich import box
from rich.table import Table
from rich.text import Text

from dersim.evaluation.outputs import format_cost
from dersim.evaluation.stats import mean_ci
from dersim.markup import markdown_cell, markdown_row
from dersim.routers.estimate import Figure
from dersim.routers.evaluate import Comparison, Curve
from dersim.routers.metrics import METRICS
from dersim.terminal import table_console

MARKDOWN = "routers.md"
JSON = "routers.json"
CURVES = "curves.parquet"
PLOT = "routers.png"

# metric -> (column header, scale, digits); cost_to_match gets the cost unit and 4 significant
# digits.
COLUMNS = {
    "aiq": ("AIQ x100", 100, 1),
    "apgr": ("APGR", 1, 2),
    "cpt50": ("CPT(50%) %", 1, 0),
    "cpt80": ("CPT(80%) %", 1, 0),
    "best_within": ("best <= strong's cost x100", 100, 1),
    "cost_to_match": ("cost to match strong", 1, -1),
}
DEFINITIONS = (
    "weak = the cheapest expert, strong = the best single expert, both chosen on train; every "
    "curve is anchored at weak's point. AIQ: area under the non-decreasing concave hull of the "
    "curve over [weak's cost, the dearest expert's cost], divided by that range. APGR: the mean "
    "performance gap recovered, (score - weak) / (strong - weak), over costs from weak's to "
    "strong's (0.5 for a random mix). CPT(p): the share of the weak-to-strong cost gap at which "
    "the curve first recovers p of the gap. best <= strong's cost: the best score of the curve at "
    "or below strong's cost; cost to match strong: the least cost at which the curve reaches "
    "strong's score."
)


def number(value: float, scale: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "never"
    if digits < 0:
        return f"{value:.3g}"
    text = f"{value * scale:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # no "-0"


def cell(figure: Figure, metric: str, stochastic: bool) -> str:
    _, scale, digits = COLUMNS[metric]
    mean, low, high = (number(v, scale, digits) for v in (figure.mean, figure.low, figure.high))
    if mean == low == high and not math.isfinite(figure.mean):
        return mean  # "never" or "n/a" on every resample
    text = f"{mean} [{low}, {high}]"
    if stochastic and math.isfinite(figure.seed_std):
        spread = (
            figure.seed_std if figure.seed_std > 1e-9 * abs(figure.mean) else 0.0
        )  # rounding noise: 0
        text += f" ±{number(spread, scale, digits)}"
    return text


def ordered(comparison: Comparison) -> list[Curve]:
    """Deployable rows first, then those that read the reference; each group in run order."""
    return sorted(comparison.curves, key=lambda c: c.uses_reference)


def headers(comparison: Comparison) -> list[str]:
    names = [COLUMNS[m][0] for m in METRICS]
    names[-1] += f" ({comparison.cost_unit})"
    return names


def title(comparison: Comparison) -> str:
    names = comparison.expert_names
    return (
        f"{comparison.split} split, {comparison.n_questions} questions, {comparison.metric}; cost "
        f"in {comparison.cost_unit} per question; weak = {names[comparison.weak]}, strong = "
        f"{names[comparison.strong]} (chosen on train)"
    )


def caveats(comparison: Comparison) -> list[str]:
    """What the reader must know to read the figures right."""
    notes = []
    if comparison.weak == comparison.strong:
        notes.append(
            "APGR and CPT are n/a: the best single expert on train is also the cheapest, so there "
            "is no weak-to-strong gap to recover."
        )
    if comparison.split == "val":
        notes.append(
            "Reported on val, the split the hyperparameters were chosen on: optimistic figures."
        )
    return notes


def seeds_note(curve: Curve) -> str:
    return f"{curve.score.shape[0]} seeds" if curve.stochastic else ""


def expert_rows(comparison: Comparison) -> list[tuple[str, str, str, str]]:
    """(expert, role, mean cost, score x100 [CI]) per single expert."""
    rows = []
    for e, name in enumerate(comparison.expert_names):
        role = ", ".join(
            r for r, i in (("weak", comparison.weak), ("strong", comparison.strong)) if i == e
        )
        score = mean_ci(comparison.single_score[e] * 100)
        rows.append(
            (
                name,
                role,
                format_cost(float(comparison.single_cost[e].mean())),
                score.format(digits=1),
            )
        )
    return rows


def print_table(comparison: Comparison) -> None:
    console = table_console()
    table = Table(
        "router",
        "ref.",
        *headers(comparison),
        "time (s)",
        title=title(comparison),
        box=box.SIMPLE_HEAD,
    )
    for column in table.columns:
        column.no_wrap = True
    for curve in ordered(comparison):
        table.add_row(
            curve.name,
            "yes" if curve.uses_reference else "",
            *[Text(cell(curve.figures[m], m, curve.stochastic)) for m in METRICS],
            f"{curve.seconds:.1f}",
            style="dim" if curve.uses_reference else None,
        )
    console.print(table)
    experts = Table(
        "expert",
        "role",
        f"cost ({comparison.cost_unit})",
        f"{comparison.metric} x100 [95% CI]",
        title="single experts on the same questions",
    )
    for row in expert_rows(comparison):
        experts.add_row(*map(Text, row))
    console.print(experts)
    for name, why in comparison.skipped.items():
        console.print(f"skipped {name}: {why}", style="dim", markup=False)
    for note in caveats(comparison):
        console.print(note, markup=False)
    stochastic = ", ".join(f"{c.name} {seeds_note(c)}" for c in comparison.curves if c.stochastic)
    if stochastic:
        console.print(f"±: standard deviation over seeds ({stochastic})", style="dim", markup=False)
    total = sum(c.seconds for c in comparison.curves)
    console.print(
        f"routing {total:.1f} s (time column: choosing on val, fitting, routing and replaying), "
        f"bootstrap of every figure {comparison.bootstrap_seconds:.1f} s ({comparison.n_boot} "
        "resamples)",
        style="dim",
    )
    console.print(
        "ref. = reads the reference answer to decide: an upper bound, not deployable. "
        + DEFINITIONS,
        style="dim",
        markup=False,
    )


def setting(comparison: Comparison, key: str, value: Any) -> str:
    """A chosen hyperparameter as text; a cascade's chain by expert names."""
    if key == "chain":
        return " > ".join(comparison.expert_names[e] for e in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(comparison: Comparison, cache: Path) -> str:
    lines = [
        f"# Routers on {cache}",
        "",
        title(comparison) + ".",
        "",
        "| router | uses reference | "
        + " | ".join(headers(comparison))
        + " | hyperparameters (chosen on val) "
        "| time (s) |",
        "|---|---|" + "---|" * (len(METRICS) + 2),
    ]
    for curve in ordered(comparison):
        chosen = (
            ", ".join(f"{k} {setting(comparison, k, v)}" for k, v in curve.hyperparameters.items())
            or "-"
        )
        label = curve.name + (f" ({seeds_note(curve)})" if curve.stochastic else "")
        lines.append(
            f"| {markdown_cell(label)} | {'yes' if curve.uses_reference else 'no'} | "
            + " | ".join(cell(curve.figures[m], m, curve.stochastic) for m in METRICS)
            + f" | {markdown_cell(chosen)} | {curve.seconds:.1f} |"
        )
    lines += [
        "",
        f"Every figure: value [95% bootstrap interval over the {comparison.n_questions} questions, "
        f"{comparison.n_boot} resamples], ±std over seeds for stochastic routers.",
        "",
        "| expert | role | cost | score x100 [95% CI] |",
        "|---|---|---|---|",
    ]
    lines += [markdown_row(row) for row in expert_rows(comparison)]
    lines += [
        "",
        *[f"Skipped {name}: {why}." for name, why in comparison.skipped.items()],
        *caveats(comparison),
        "",
        DEFINITIONS,
        "",
        f"![cost-quality curves]({PLOT})",
        "",
    ]
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, inf to "never", nan to null."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "never"
    return value


def to_json(comparison: Comparison, cache: Path) -> dict[str, Any]:
    names = comparison.expert_names
    return plain(
        {
            "cache": str(cache),
            "split": comparison.split,
            "questions": comparison.n_questions,
            "metric": comparison.metric,
            "cost_unit": comparison.cost_unit,
            "weak": names[comparison.weak],
            "strong": names[comparison.strong],
            "seeds": comparison.seeds,
            "bootstrap_resamples": comparison.n_boot,
            "judge_p0": comparison.p0,
            "definitions": DEFINITIONS,
            "caveats": caveats(comparison),
            "experts": [
                {
                    "name": n,
                    "cost": float(comparison.single_cost[e].mean()),
                    "score": mean_ci(comparison.single_score[e]).to_dict(),
                }
                for e, n in enumerate(names)
            ],
            "routers": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "uses_reference": c.uses_reference,
                    "stochastic": c.stochastic,
                    "seeds": int(c.score.shape[0]),
                    "points": int(c.score.shape[1]),
                    "hyperparameters": c.hyperparameters,
                    "selection_on_val": c.selection,
                    "seconds": c.seconds,
                    **{m: c.figures[m].to_dict() for m in METRICS},
                }
                for c in ordered(comparison)
            ],
            "skipped": comparison.skipped,
            "bootstrap_seconds": comparison.bootstrap_seconds,
        }
    )


def curve_frame(comparison: Comparison) -> pl.DataFrame:
    """A row per router, seed and curve point: the swept value, mean cost, score and calls."""
    rows = []
    for curve in comparison.curves:
        for seed in range(curve.score.shape[0]):
            for point, setting in enumerate(curve.settings):
                rows.append(
                    {
                        "router": curve.name,
                        "kind": curve.kind,
                        "uses_reference": curve.uses_reference,
                        "seed": seed,
                        "point": point,
                        "setting": float(setting),
                        "cost": float(curve.cost[seed, point].mean()),
                        "score": float(curve.score[seed, point].mean()),
                        "calls": float(curve.calls[seed, point].mean()),
                    }
                )
    return pl.DataFrame(rows)


def write_results(out: Path, comparison: Comparison, cache: Path) -> None:
    """routers.md, routers.json and curves.parquet in `out` (the plot is drawn after them)."""
    (out / MARKDOWN).write_text(markdown(comparison, cache), encoding="utf-8")
    (out / JSON).write_text(json.dumps(to_json(comparison, cache), indent=2), encoding="utf-8")
    curve_frame(comparison).write_parquet(out / CURVES)
