"""Names from the data (model names, labels) stay inside their Markdown and LaTeX table cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from click.testing import CliRunner

from dersim.cli import main
from dersim.markup import latex_escape, markdown_cell, markdown_row

ODD_MODELS = ("gpt|4", "line\nbreak", "back\\slash")


def cells(row: str) -> list[str]:
    """The cells of a Markdown table row, splitting at unescaped pipes."""
    parts, current, i = [], "", 0
    body = row.strip()[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            current += body[i : i + 2]
            i += 2
            continue
        if body[i] == "|":
            parts.append(current)
            current = ""
        else:
            current += body[i]
        i += 1
    return [*parts, current]


def test_markdown_cells_escape_pipes_and_fold_newlines() -> None:
    assert markdown_cell("a|b\nc") == r"a\|b c"
    assert len(cells(markdown_row(["gpt|4", "x", "back\\slash|"]))) == 3
    assert (
        latex_escape("a & b_c\n50% {x} $y$ ~^")
        == r"a \& b\_c 50\% \{x\} \$y\$ \textasciitilde{}\textasciicircum{}"
    )


def test_a_model_name_with_a_pipe_or_a_newline_keeps_the_routers_table_intact(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    rows = [
        {
            "qid": f"q{q}",
            "text": f"Question {q}?",
            "llm": model,
            "out": f"answer {q} {m}",
            "grade": float(rng.random() < 0.3 + 0.3 * m),
            "usd": 0.001 * (m + 1),
            "split": "test" if q % 4 == 0 else "train",
        }
        for q in range(40)
        for m, model in enumerate(ODD_MODELS)
    ]
    pl.DataFrame(rows).write_ndjson(tmp_path / "answers.jsonl")
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "cache",
            "import",
            "long",
            str(tmp_path / "answers.jsonl"),
            "--out",
            str(tmp_path / "cache"),
            "--question-id",
            "qid",
            "--question",
            "text",
            "--model",
            "llm",
            "--answer",
            "out",
            "--score",
            "grade",
            "--cost",
            "usd",
            "--split",
            "split",
            "--embedding",
            "hashing",
            "--dim",
            "16",
            "--max-calls",
            "1",
            "--quiet",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    names = json.loads((tmp_path / "cache" / "manifest.json").read_text())["experts"]
    assert {e["name"] for e in names} == set(ODD_MODELS)
    result = runner.invoke(
        main,
        [
            "routers",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "routers"),
            "--routers",
            "best-single,random-mix,knn",
            "--seeds",
            "1",
            "--bootstrap",
            "10",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "routers" / "routers.md").read_text().splitlines()
    routers = lines.index(next(line for line in lines if line.startswith("| router")))
    experts = lines.index(next(line for line in lines if line.startswith("| expert")))
    router_rows = [line for line in lines[routers:experts] if line.startswith("|")]
    expert_rows = [line for line in lines[experts:] if line.startswith("|")]
    assert len(router_rows) >= 5 and len({len(cells(line)) for line in router_rows}) == 1
    assert len(expert_rows) == 2 + len(ODD_MODELS) and {
        len(cells(line)) for line in expert_rows
    } == {4}
    assert any(r"gpt\|4" in line for line in expert_rows) and any(
        "line break" in line for line in expert_rows
    )
