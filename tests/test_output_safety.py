"""`--overwrite` removes only what dersim wrote, and only after every option is checked; output
directories holding anything else are refused with one line, and nothing in them changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dersim.builder.build import build_cache
from dersim.cli import main
from dersim.ownership import MARKER
from dersim.recipe import load_recipe

from conftest import synthetic_recipe_text


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result: Result, *parts: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (but the lock file) with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".dersim.lock"
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("safety")
    (root / "recipe.toml").write_text(synthetic_recipe_text(), encoding="utf-8")
    build_cache(load_recipe(root / "recipe.toml"), root / "cache", show_progress=False)
    return root / "cache"


@pytest.fixture(scope="module")
def run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    result = cli(
        "train",
        "--vectorized",
        "--cache",
        cache,
        "--out",
        out,
        "--grid",
        "alpha=0,0.1",
        "--seeds",
        1,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return out


def test_reproduce_overwrite_with_a_bad_option_deletes_nothing(cache: Path, tmp_path: Path) -> None:
    """It used to empty --out before rejecting --metric."""
    out = tmp_path / "reproduction"
    out.mkdir()
    (out / MARKER).write_text('{"kind": "reproduction"}\n')
    (out / "tables.md").write_text("earlier tables\n")
    before = snapshot(out)
    one_line_error(
        cli(
            "reproduce",
            "--cache",
            cache,
            "--quick",
            "--metric",
            "typo",
            "--overwrite",
            "--out",
            out,
        ),
        "metric 'typo' is not in the cache",
    )
    assert snapshot(out) == before


def test_train_overwrite_refuses_a_run_directory_holding_the_users_files(
    cache: Path, run: Path, tmp_path: Path
) -> None:
    """It used to delete every file in --out."""
    target = tmp_path / "run"
    shutil.copytree(run, target)
    (target / "notes.txt").write_text("mine\n")
    before = snapshot(target)
    one_line_error(
        cli("train", "--vectorized", "--cache", cache, "--out", target, "--overwrite", "--quiet"),
        f"{target}: holds notes.txt",
        "nothing was changed",
    )
    assert snapshot(target) == before


def test_train_overwrite_replaces_its_own_run(cache: Path, run: Path, tmp_path: Path) -> None:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    (target / "summary.md").write_text(
        "an earlier evaluation\n"
    )  # dersim eval's, so dersim's to remove
    result = cli(
        "train",
        "--vectorized",
        "--cache",
        cache,
        "--out",
        target,
        "--overwrite",
        "--seeds",
        1,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert not (target / "summary.md").exists() and (target / "run.json").exists()


def test_out_dot_in_a_working_tree_is_refused_and_untouched(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "README.md").write_text("# my project\n")
    (tree / "src" / "main.py").write_text("print('hello')\n")
    before = snapshot(tree)
    monkeypatch.chdir(tree)
    for command in (
        ["train", "--vectorized", "--cache", cache, "--out", ".", "--overwrite", "--quiet"],
        ["reproduce", "--cache", cache, "--quick", "--out", ".", "--overwrite"],
        ["routers", "--cache", cache, "--out", ".", "--quiet"],
    ):
        one_line_error(cli(*command), "holds README.md", "choose an empty or new --out")
    assert snapshot(tree) == before


def test_overwrite_refuses_a_directory_not_marked_as_dersims(
    cache: Path, run: Path, tmp_path: Path
) -> None:
    """A directory with only names dersim writes, but no marker (not dersim's, or an older
    dersim's)."""
    target = tmp_path / "unmarked"
    shutil.copytree(run, target)
    (target / MARKER).unlink()
    before = snapshot(target)
    one_line_error(
        cli("train", "--vectorized", "--cache", cache, "--out", target, "--overwrite", "--quiet"),
        "not marked as a dersim run",
    )
    assert snapshot(target) == before


def test_routers_refuses_to_write_into_a_run(cache: Path, run: Path, tmp_path: Path) -> None:
    """routers' curves.parquet would have replaced the run's."""
    target = tmp_path / "run"
    shutil.copytree(run, target)
    before = snapshot(target)
    one_line_error(
        cli("routers", "--cache", cache, "--out", target, "--quiet"),
        "holds a dersim run, not a routers",
    )
    assert snapshot(target) == before


def test_import_overwrite_refuses_a_directory_holding_other_files(tmp_path: Path) -> None:
    source = tmp_path / "answers.csv"
    source.write_text("prompt,model_a,model_b\n" + "".join(f"q{i},1,0\n" for i in range(10)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("\\documentclass{article}\n")
    before = snapshot(out)
    one_line_error(
        cli(
            "cache",
            "import",
            "wide",
            source,
            "--out",
            out,
            "--overwrite",
            "--embedding",
            "hashing",
            "--dim",
            8,
            "--quiet",
        ),
        "holds thesis.tex",
    )
    assert snapshot(out) == before
