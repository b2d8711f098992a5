"""A run's evaluation as results: runs.parquet, summary.md and the terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from rich.table import Table

from dersim.evaluation.report import Evaluation
from dersim.markup import markdown_cell
from dersim.terminal import table_console
from dersim.trainer.algorithms import LEARNING_KEYS, USES
from dersim.trainer.grid import GRID_KEYS

RUNS = "runs.parquet"
SUMMARY = "summary.md"


def format_cost(value: float) -> str:
    """Four significant digits: B params (0.49), USD (0.0001234) and seconds read alike."""
    return f"{value:.4g}"


def policy_label(row: dict[str, Any], varied: list[str]) -> str:
    """'policy 3 (fqi, l2 1, alpha 0.1, seed 1)': the settings that differ across the run's policies
    and that the policy's algorithm reads."""
    shown = [k for k in varied if k not in LEARNING_KEYS or k == "algo" or k in USES[row["algo"]]]
    settings = [f"{k} {row[k]:g}" if isinstance(row[k], float) else f"{k} {row[k]}" for k in shown]
    settings.append(f"seed {row['seed']}")
    return f"policy {row['policy']} ({', '.join(settings)})"


def varied_settings(policies: pl.DataFrame) -> list[str]:
    return [k for k in GRID_KEYS if k in policies.columns and policies[k].n_unique() > 1]


def ranked_rows(evaluation: Evaluation, top: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, row) for the table: the best `top` deployable policies by the chosen-on split, the
    deployable baselines, then the reference rows (the best oracle-stop policy, reference
    baselines)."""
    policies, split = evaluation.policies, evaluation.chosen_on
    varied = varied_settings(policies)
    order = [f"{split}_{evaluation.metric}", f"{split}_cost", "policy"]
    ranked = policies.sort(order, descending=[True, False, False])
    rows = []
    for i, row in enumerate(
        ranked.filter(~pl.col("uses_reference")).head(top).iter_rows(named=True)
    ):
        rows.append((("best policy: " if i == 0 else "") + policy_label(row, varied), row))
    rows += [
        (row["name"], row)
        for row in evaluation.baselines.filter(~pl.col("uses_reference")).iter_rows(named=True)
    ]
    for row in ranked.filter(pl.col("uses_reference")).head(1).iter_rows(named=True):
        rows.append((f"best oracle-stop policy: {policy_label(row, varied)}", row))
    rows += [
        (row["name"], row)
        for row in evaluation.baselines.filter(pl.col("uses_reference")).iter_rows(named=True)
    ]
    return rows


def judge_line(judge: dict[str, dict[str, float]]) -> str:
    """'val 73.7% (majority class 75.1%), test 76.8% (...)'."""
    return ", ".join(
        f"{split} {v['accuracy']:.1%} (majority class {v['majority']:.1%})"
        for split, v in judge.items()
    )


def title(evaluation: Evaluation, n_questions: int | None = None) -> str:
    chosen = f"best by {evaluation.chosen_on} {evaluation.metric}"
    if evaluation.best_policy is None:
        chosen = "no deployable policy in this run"
    return (
        f"{evaluation.split} split: {evaluation.policies.height} policies ({chosen}), baselines "
        f"and reference rows; cost in {evaluation.cost_unit} per question"
    )


def print_table(evaluation: Evaluation, top: int = 5) -> None:
    """The table on stdout; all columns are kept when piped (no 80-column truncation)."""
    console = table_console()
    metric, others = evaluation.metrics[0], evaluation.metrics[1:]
    wide = console.width >= 140  # the per-expert share of calls only fits a wide terminal
    table = Table(
        "router",
        "uses ref.",
        f"{metric} x100",
        "95% CI",
        *[f"{m} x100" for m in others],
        f"cost ({evaluation.cost_unit})",
        "calls",
        *(["expert share"] if wide else []),
        title=title(evaluation),
    )
    for column in table.columns[1:]:
        column.no_wrap = (
            True  # numbers and metric names stay readable; long router names wrap instead
        )
    for label, row in ranked_rows(evaluation, top):
        share = " ".join(
            f"{k[:12]}:{v:.0%}" for k, v in (row.get("expert_share") or {}).items() if v
        )
        table.add_row(
            label,
            "yes" if row["uses_reference"] else "",
            f"{row[metric]:.2f}",
            f"[{row[f'{metric}_low']:.2f}, {row[f'{metric}_high']:.2f}]",
            *[f"{row[m]:.2f}" for m in others],
            format_cost(row["cost"]),
            f"{row['calls']:.2f}",
            *([share] if wide else []),
            style="dim" if row["uses_reference"] else None,
        )
    console.print(table)
    if evaluation.judge:
        console.print(
            f"judge terminator accuracy (its stop decision = the reference's P >= p0, on answer "
            f"states): {judge_line(evaluation.judge)}"
        )
    console.print(
        "uses ref. = the row read the reference answer to decide (oracle stop or oracle pick): an "
        "upper bound, not deployable.",
        style="dim",
    )


def summary_markdown(evaluation: Evaluation, top: int = 5) -> str:
    metrics = evaluation.metrics
    lines = [
        f"# dersim run: {evaluation.policies.height} policies, evaluated on the {evaluation.split} "
        "split",
        "",
        title(evaluation) + ".",
        "",
        "| router | uses reference | "
        + " | ".join(f"{m} x100 [95% CI]" for m in metrics)
        + f" | cost ({evaluation.cost_unit}/question) | calls |",
        "|---|---|" + "---|" * (len(metrics) + 2),
    ]
    for label, row in ranked_rows(evaluation, top):
        cells = [f"{row[m]:.2f} [{row[f'{m}_low']:.2f}, {row[f'{m}_high']:.2f}]" for m in metrics]
        lines.append(
            f"| {markdown_cell(label)} | {'yes' if row['uses_reference'] else 'no'} | "
            + " | ".join(cells)
            + f" | {format_cost(row['cost'])} | {row['calls']:.2f} |"
        )
    if evaluation.judge:
        lines += ["", f"Judge accuracy on answer states: {judge_line(evaluation.judge)}."]
    lines += [
        "",
        "Rows that use the reference (oracle stop, oracle pick) are upper bounds, not deployable.",
        "",
        "![learning curves](curves.png)",
        "",
        f"![cost vs quality](pareto_{evaluation.split}.png)",
        "",
    ]
    return "\n".join(lines)


def write_results(out: Path, evaluation: Evaluation, curves: pl.DataFrame) -> None:
    """runs.parquet (a row per policy, in policy order: settings, train / val / held-out scores,
    cost, calls, last training return) and summary.md."""
    last = (
        curves.sort("chunk")
        .group_by("policy", maintain_order=True)
        .last()
        .select("policy", pl.col("return").alias("train_episode_return"))
    )
    runs = evaluation.policies.join(last, on="policy").drop("name", "kind").sort("policy")
    runs.write_parquet(out / RUNS)
    (out / SUMMARY).write_text(summary_markdown(evaluation), encoding="utf-8")
