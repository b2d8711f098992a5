"""Options are checked before any work: NaN, infinities and absurd counts get click's usage
error."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dersim.cli import main


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["routers", "--p0", "nan"], "--p0"),
        (["routers", "--judge-error", "nan"], "--judge-error"),
        (["routers", "--val-fraction", "nan"], "--val-fraction"),
        (["routers", "--seeds", "99999999999999999999"], "--seeds"),
        (["routers", "--bootstrap", "10000000000"], "--bootstrap"),
        (["reproduce", "--p0", "nan"], "--p0"),
        (["reproduce", "--p0", "inf"], "--p0"),
        (["reproduce", "--seeds", "99999999999999999999"], "--seeds"),
        (["train", "--seeds", "99999999999999999999"], "--seeds"),
        (["cache", "import", "wide", "x.csv", "--test-fraction", "nan"], "--test-fraction"),
    ],
)
def test_bad_numbers_are_usage_errors_naming_the_option(
    args: list[str], option: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before any directory is made
