"""The command line: one-line errors with exit status 2, JSON reports, verify's exit status."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dersim.cache.schema import STATES
from dersim.cli import main

from conftest import synthetic_recipe_text


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_build_info_verify_round_trip(write_recipe, tmp_path: Path) -> None:
    recipe = write_recipe(synthetic_recipe_text())
    out = tmp_path / "c"
    built = invoke(
        "build-cache", str(recipe), "--out", str(out), "--quiet", "--json", "--limit", "6"
    )
    assert built.exit_code == 0, built.output
    report = json.loads(built.output)
    assert report["questions"] == 6 and report["failed"] == 0
    verified = invoke("cache", "verify", str(out))
    assert verified.exit_code == 0 and "ok" in verified.output
    info = json.loads(invoke("cache", "info", str(out), "--json").output)
    assert info["states"] == report["states"] and info["transitions"] == report["transitions"]
    assert info["depth"] == 2 and info["failed_calls"] == 0
    human = invoke("cache", "info", str(out))
    assert human.exit_code == 0 and "oracle" in human.output


def test_bad_inputs_exit_2_with_one_line(write_recipe, tmp_path: Path) -> None:
    broken = write_recipe(
        synthetic_recipe_text().replace('backend = "synthetic"', 'backend = "nope"', 1)
    )
    for args in (
        ["build-cache", str(broken)],
        ["build-cache", str(tmp_path / "missing.toml")],
        ["cache", "info", str(tmp_path)],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, args
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output


def test_missing_dataset_rows_name_the_file(write_recipe, tmp_path: Path) -> None:
    data = tmp_path / "task.json"
    data.write_text('{"examples": [{"input": "q?"}]}', encoding="utf-8")
    recipe = write_recipe(synthetic_recipe_text(train=1, test=0, dataset=data))
    result = invoke("build-cache", str(recipe), "--out", str(tmp_path / "c"), "--quiet")
    assert result.exit_code == 2
    assert f"{data}: example 0: missing text 'target'" in result.output


def test_verify_exits_1_on_a_damaged_cache(write_recipe, tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert (
        invoke(
            "build-cache", str(write_recipe(synthetic_recipe_text())), "--out", str(out), "--quiet"
        ).exit_code
        == 0
    )
    (out / STATES).write_bytes(b"not parquet")
    result = invoke("cache", "verify", str(out))
    assert result.exit_code == 1 and "sha256 differs" in result.output
    info = invoke("cache", "info", str(out))
    assert info.exit_code == 2 and "sha256 differs" in info.output
    info = invoke("cache", "info", str(out), "--no-verify")
    assert info.exit_code == 2 and "unreadable Parquet" in info.output
