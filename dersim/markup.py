"""Escaping text for the Markdown and LaTeX tables dersim writes: a model name, route label or
hyperparameter holding `|`, `&` or a newline must stay inside its cell."""

from __future__ import annotations

from collections.abc import Sequence

_LATEX = (
    ("\\", r"\textbackslash{}"),
    ("&", r"\&"),
    ("%", r"\%"),
    ("_", r"\_"),
    ("#", r"\#"),
    ("$", r"\$"),
    ("{", r"\{"),
    ("}", r"\}"),
    ("~", r"\textasciitilde{}"),
    ("^", r"\textasciicircum{}"),
    (">", r"$>$"),
    ("<", r"$<$"),
    ("±", r"$\pm$"),
    ("Δ", r"$\Delta$"),
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def markdown_cell(text: object) -> str:
    """`text` as one Markdown table cell: whitespace runs (newlines included) become one space,
    pipes and backslashes are escaped."""
    return _one_line(str(text)).replace("\\", "\\\\").replace("|", r"\|")


def markdown_row(cells: Sequence[object]) -> str:
    """One Markdown table row of escaped cells."""
    return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"


def latex_escape(text: object) -> str:
    """`text` safe inside a LaTeX tabular cell or caption (one line, special characters escaped)."""
    text = _one_line(str(text))
    escaped = []
    for char in text:
        escaped.append(next((b for a, b in _LATEX if a == char), char))
    return "".join(escaped)
