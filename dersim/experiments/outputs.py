"""The reproduction's outputs: tables.md, tables.tex (booktabs), results.parquet (one row per
cell) and the plots (score and cost against T_max, route lengths, cost-quality of the main table).
Results are written before the plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from dersim.cache.costs import COST_UNITS  # noqa: E402
from dersim.evaluation.plots import finish_cost_quality  # noqa: E402
from dersim.experiments.reproduce import Reproduction  # noqa: E402
from dersim.experiments.tables import Cell, Scored, Table, score_table  # noqa: E402
from dersim.markup import latex_escape, markdown_cell  # noqa: E402

RESULTS = "results.parquet"
COST_COLUMNS = {"cost": None, "params": "B params / question", "seconds": "s / sample"}
ROW_COLORS = (
    "tab:blue",
    "tab:green",
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)  # red is kept for the rows that read the reference


def scored_tables(result: Reproduction) -> list[tuple[Table, list[Scored]]]:
    return [
        (table, score_table(table, result.scores, result.plan.depth)) for table in result.tables
    ]


def header(result: Reproduction) -> list[str]:
    plan = result.plan
    grids = ", ".join(f"{g.name} ({len(g.settings)} settings)" for g in plan.grids)
    return [
        f"# DER ablations on `{plan.cache}`",
        "",
        f"- Experts: {', '.join(result.expert_names)}; depth D = {plan.depth}; {result.n_test} "
        "test questions.",
        f"- Metric {plan.metric} (x100), p0 = {plan.p0:g}; cost mode {plan.cost_mode} "
        f"({COST_UNITS[plan.cost_mode]}), auto cost scale.",
        f"- {plan.seeds} seed(s) x {plan.steps:,} env steps per policy; grids: {grids}.",
        "- Paper setting: paper reward (beta 5, gamma 2, alpha 0.016 on the auto scale), oracle "
        "terminator. Deployable setting: final reward (gamma 0, alpha 0.05), learned STOP.",
        "- Cells: mean [95% bootstrap CI over questions] ± std over seeds (trained rows). Δ: "
        "paired difference to the row named in 'vs' (x100, [95% CI]); the paper's effect beside "
        "it. 'ref.' marks rows that read the reference answer to decide (not deployable).",
        "",
    ]


def cost_label(result: Reproduction, name: str) -> str:
    return COST_COLUMNS[name] or f"{COST_UNITS[result.plan.cost_mode]} / question"


def fmt(value: float, digits: int = 4) -> str:
    return "?" if value is None or np.isnan(value) else f"{value:.{digits}g}"


def markdown_table(table: Table, scored: list[Scored], result: Reproduction) -> list[str]:
    lines = [f"## {table.title}", ""]
    if table.lengths:
        lines += [
            "| setting | ref. | "
            + " | ".join(f"{k} steps" for k in range(result.plan.depth + 1))
            + " |",
            "|---|---|" + "---|" * (result.plan.depth + 1),
        ]
        for s in scored:
            lines.append(
                f"| {markdown_cell(s.row.label)} | {'yes' if s.row.uses_reference else ''} | "
                + " | ".join(f"{share:.0%}" for share in s.lengths)
                + " |"
            )
        return [*lines, ""]
    costs = ["cost", "params", "seconds"] if table.name == "main" else ["cost"]
    if table.name == "main" and result.plan.cost_mode == "params":
        costs = ["params", "seconds"]
    extra = ["agent params"] if table.name == "main" else []
    lines += [
        "| row | ref. | "
        + " | ".join(f"{m} x100" for m in table.metrics)
        + " | "
        + " | ".join(cost_label(result, c) for c in costs)
        + " | calls | "
        + " | ".join(extra)
        + (" | " if extra else "")
        + f"Δ {table.metrics[0]} [CI] | Δ cost | vs | paper |",
        "|---|---|" + "---|" * (len(table.metrics) + len(costs) + len(extra) + 5),
    ]
    for s in scored:
        agent = [f"{s.row.agent_params / 1e6:.3f}M" if s.row.agent_params else "-"] if extra else []
        delta = s.delta.text() if s.delta else ""
        delta_cost = f"{s.delta_cost:+.0%}" if s.delta_cost is not None else ""
        lines.append(
            f"| {markdown_cell(s.row.label)} | {'yes' if s.row.uses_reference else ''} | "
            + " | ".join(s.scores[m].text() for m in table.metrics)
            + " | "
            + " | ".join(fmt(s.costs[c].mean) for c in costs)
            + f" | {s.calls.mean:.2f} | "
            + " | ".join(agent)
            + (" | " if extra else "")
            + f"{delta} | {delta_cost} | {markdown_cell(s.row.vs or '')} | "
            + f"{markdown_cell(s.row.paper)} |"
        )
    if table.note:
        lines += ["", f"Paper: {table.note}"]
    return [*lines, ""]


def latex_table(table: Table, scored: list[Scored], result: Reproduction) -> list[str]:
    if table.lengths:
        head = ["setting", "ref."] + [f"{k} steps" for k in range(result.plan.depth + 1)]
        body = [
            [s.row.label, "yes" if s.row.uses_reference else ""] + [f"{v:.0%}" for v in s.lengths]
            for s in scored
        ]
    else:
        head = (
            ["row", "ref."]
            + [f"{m} x100" for m in table.metrics]
            + ["cost", "calls", f"Δ {table.metrics[0]}"]
        )
        body = [
            [s.row.label, "yes" if s.row.uses_reference else ""]
            + [s.scores[m].text() for m in table.metrics]
            + [fmt(s.costs["cost"].mean), f"{s.calls.mean:.2f}", s.delta.text() if s.delta else ""]
            for s in scored
        ]
    lines = [
        f"% {table.title}",
        r"\begin{table}[t]",
        r"\centering\small",
        r"\begin{tabular}{" + "l" * len(head) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{latex_escape(table.title)}}}",
        rf"\label{{tab:{table.name}}}",
        r"\end{table}",
        "",
    ]
    return lines


def results_frame(tables: list[tuple[Table, list[Scored]]]) -> pl.DataFrame:
    """One row per cell: table, row, column, mean, interval, seed spread, delta where it applies."""
    records = []
    for table, scored in tables:
        for s in scored:
            cells: dict[str, Cell] = {
                **{m: s.scores[m] for m in table.metrics},
                **s.costs,
                "calls": s.calls,
            }
            base = {
                "table": table.name,
                "row": s.row.label,
                "uses_reference": s.row.uses_reference,
                "vs": s.row.vs,
                "paper": s.row.paper,
            }
            for column, c in cells.items():
                records.append(
                    {
                        **base,
                        "column": column,
                        "mean": c.mean,
                        "low": c.low,
                        "high": c.high,
                        "seed_std": c.seed_std,
                    }
                )
            for k, share in enumerate(s.lengths):
                records.append(
                    {
                        **base,
                        "column": f"share_{k}_steps",
                        "mean": share,
                        "low": None,
                        "high": None,
                        "seed_std": None,
                    }
                )
            if s.delta:
                records.append(
                    {
                        **base,
                        "column": f"delta_{table.metrics[0]}",
                        "mean": s.delta.mean,
                        "low": s.delta.low,
                        "high": s.delta.high,
                        "seed_std": None,
                    }
                )
    return pl.DataFrame(
        records, schema_overrides={"low": pl.Float64, "high": pl.Float64, "seed_std": pl.Float64}
    )


def write_results(result: Reproduction, out: Path) -> list[tuple[Table, list[Scored]]]:
    tables = scored_tables(result)
    markdown = header(result)
    latex = [f"% DER ablations on {result.plan.cache}; needs \\usepackage{{booktabs}}", ""]
    for table, scored in tables:
        markdown += markdown_table(table, scored, result)
        latex += latex_table(table, scored, result)
    (out / "tables.md").write_text("\n".join(markdown), encoding="utf-8")
    (out / "tables.tex").write_text("\n".join(latex), encoding="utf-8")
    results_frame(tables).write_parquet(out / RESULTS)
    return tables


def plot_t_max(table: Table, scored: list[Scored], result: Reproduction, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    metric = table.metrics[0]
    for family, color in (("paper", "tab:red"), ("deployable", "tab:blue")):
        rows = [
            s
            for s in scored
            if s.row.label.startswith(f"DER {family}:") and "none" not in s.row.label
        ]
        t = [int(s.row.label.rsplit("T_max ", 1)[1]) for s in rows]
        for ax, values in (
            (axes[0], [s.scores[metric] for s in rows]),
            (axes[1], [s.costs["cost"] for s in rows]),
        ):
            ax.errorbar(
                t,
                [v.mean for v in values],
                yerr=[[v.mean - v.low for v in values], [v.high - v.mean for v in values]],
                marker="o",
                capsize=3,
                color=color,
                label=f"DER {family}"
                + (" (oracle terminator: uses reference)" if family == "paper" else ""),
            )
    for s in scored:
        if "none" in s.row.label:
            axes[0].axhline(
                s.scores[metric].mean, color="tab:red", linestyle=":", label="paper, w/o terminator"
            )
            axes[1].axhline(
                s.costs["cost"].mean, color="tab:red", linestyle=":", label="paper, w/o terminator"
            )
    axes[0].set_ylabel(f"test {metric} x100 (95% CI)")
    axes[1].set_ylabel(f"cost ({cost_label(result, 'cost')})")
    for ax in axes:
        ax.set_xlabel("T_max")
        ax.set_xticks(range(1, result.plan.depth + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("score and cost against T_max")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_route_lengths(scored: list[Scored], result: Reproduction, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(scored) + 1.5))
    labels = [s.row.label + (" (ref.)" if s.row.uses_reference else "") for s in scored]
    left = np.zeros(len(scored))
    for k in range(result.plan.depth + 1):
        shares = np.array([s.lengths[k] for s in scored])
        ax.barh(
            labels,
            shares,
            left=left,
            label=f"{k} steps",
            color=plt.cm.viridis(k / max(result.plan.depth, 1)),
        )
        left += shares
    ax.invert_yaxis()
    ax.set_xlabel("share of test questions")
    ax.set_xlim(0, 1)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("route lengths per setting")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_main(table: Table, scored: list[Scored], result: Reproduction, path: Path) -> None:
    metric = table.metrics[0]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, s in enumerate(scored):
        c = s.scores[metric]
        ax.errorbar(
            s.costs["cost"].mean,
            c.mean,
            yerr=[[c.mean - c.low], [c.high - c.mean]],
            capsize=3,
            fmt="*" if s.row.uses_reference else "osD^v<>ph"[i % 9],
            markersize=10 if i == 0 else 7,
            color="tab:red" if s.row.uses_reference else ROW_COLORS[i % len(ROW_COLORS)],
            label=s.row.label + (" (uses reference)" if s.row.uses_reference else ""),
        )
    costs = np.array([s.costs["cost"].mean for s in scored])
    finish_cost_quality(
        fig,
        ax,
        costs,
        cost_label(result, "cost"),
        f"test {metric} x100 (95% CI)",
        "main table: cost against quality",
        path,
    )


def write_plots(
    tables: list[tuple[Table, list[Scored]]], result: Reproduction, out: Path
) -> list[str]:
    by_name = dict((t.name, (t, s)) for t, s in tables)
    plot_t_max(*by_name["t_max"], result, out / "t_max.png")
    plot_route_lengths(by_name["route_lengths"][1], result, out / "route_lengths.png")
    plot_main(*by_name["main"], result, out / "cost_quality.png")
    return ["t_max.png", "route_lengths.png", "cost_quality.png"]
