"""Recipe parsing: the shipped recipes load, and every malformed recipe gets a one-line error naming
the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dersim.errors import RecipeError
from dersim.recipe import PAPER_KTP, load_recipe

from conftest import REPO, synthetic_recipe_text


@pytest.mark.parametrize("name", ["synthetic", "strategyqa", "math"])
def test_shipped_recipes_load_and_point_at_real_data(name: str) -> None:
    recipe = load_recipe(REPO / "builders" / f"{name}.toml")
    assert recipe.dataset.path.exists()
    assert recipe.build.depth >= 2
    assert len({e.name for e in recipe.experts}) == len(recipe.experts)
    assert all(e.temperature == 0.0 for e in recipe.experts)


def test_strategyqa_recipe_uses_the_paper_ktp_and_three_real_experts() -> None:
    recipe = load_recipe(REPO / "builders" / "strategyqa.toml")
    assert recipe.prompt.ktp_template == PAPER_KTP
    assert [e.backend for e in recipe.experts] == ["llama_cpp"] * 3
    assert all(len(e.sha256) == 64 for e in recipe.experts)
    assert {e.prompt_format for e in recipe.experts} == {"chat", "completion"}
    base = next(e for e in recipe.experts if e.prompt_format == "completion")
    assert base.few_shot.strip(), "the base model needs a few-shot prefix"


def test_defaults_fill_missing_sections(write_recipe) -> None:
    recipe = load_recipe(write_recipe(synthetic_recipe_text(depth=3)))
    assert recipe.build.depth == 3
    assert recipe.prompt.ktp_template == PAPER_KTP
    assert recipe.metrics.names == ("accuracy_yesno", "token_f1", "rouge_l")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[dataset]", "[datasets]", "missing required key 'dataset'"),
        ("[build]", "[[[", "invalid TOML"),
        ('name = "tiny"', 'name = "tiny"\ncolour = "red"', "unknown key 'colour'"),
        ("depth = 2", "depth = 0", "key 'depth' must be > 0"),
        ("depth = 2", "depth = 'deep'", "key 'depth' must be int"),
        ('"accuracy_yesno", ', '"bleu", ', "unknown metric 'bleu'"),
        (
            'name = "tiny"',
            'name = "tiny"\n[prompt]\nktp_template = "x"',
            "must contain '{previous_answer}'",
        ),
        ('backend = "synthetic"', 'backend = "telepathy"', "unknown backend 'telepathy'"),
        ("params_b = 0.5", "params_b = 0.5\ntempreature = 0", "unknown key 'tempreature'"),
        ("params_b = 0.5", "params_b = 0.5\nsamples = 4", "key 'samples' needs temperature > 0"),
        ("params_b = 0.5", "params_b = 0.5\ntop_p = 0.9", "key 'top_p' needs temperature > 0"),
        (
            "params_b = 0.5",
            "params_b = 0.5\ntemperature = 0.7\nsamples = 0",
            "key 'samples' must be >= 1, got 0",
        ),
        ("params_b = 0.5", "params_b = 0.5\ntemperature = -1.0", "key 'temperature' must be >= 0"),
        (
            "params_b = 0.5",
            "params_b = 0.5\ntemperature = 0.7\ntop_p = 0.0",
            "key 'top_p' must be in (0, 1]",
        ),
        ('name = "medium"', 'name = "small"', "expert name 'small' appears twice"),
        ("params_b = 0.5", "params_b = -1.0", "key 'params_b' must be > 0"),
        ('source = "bigbench"', 'source = "kaggle"', "key 'source' must be one of"),
        ('task = "strategyqa"', 'task = "chess"', "key 'task' must be one of"),
        ('name = "tiny"', 'name = "../../../tmp/elsewhere"', "must be a plain name"),
        ('name = "tiny"', 'name = "a/b"', "must be a plain name"),
        ('name = "tiny"', 'name = ".."', "must be a plain name"),
        ('name = "tiny"', 'name = ""', "must be a plain name"),
    ],
)
def test_malformed_recipes_name_file_and_key(
    write_recipe, old: str, new: str, message: str
) -> None:
    text = synthetic_recipe_text()
    assert old in text
    path = write_recipe(text.replace(old, new, 1))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_a_recipe_name_cannot_make_build_cache_write_outside_cache(
    write_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from dersim.cli import main

    path = write_recipe(
        synthetic_recipe_text().replace('name = "tiny"', 'name = "../../escaped"', 1)
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["build-cache", str(path), "--quiet"])
    assert result.exit_code != 0 and "must be a plain name" in result.output
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "cache").exists()


def test_sampled_experts_parse_and_their_counts_must_divide(write_recipe) -> None:
    """temperature > 0 with k samples parses (and marks the recipe sampled); a greedy expert
    beside it is fine (1 divides k), an expert whose k does not divide the largest is an error."""
    text = synthetic_recipe_text().replace(
        "params_b = 0.5", "params_b = 0.5\ntemperature = 0.7\ntop_p = 0.95\nsamples = 4", 1
    )
    recipe = load_recipe(write_recipe(text))
    assert [(e.temperature, e.top_p, e.samples) for e in recipe.experts][0] == (0.7, 0.95, 4)
    assert recipe.sampled and max(e.samples for e in recipe.experts[1:]) == 1
    uneven = text.replace('name = "medium"', 'name = "medium"\ntemperature = 1.0\nsamples = 3', 1)
    with pytest.raises(RecipeError, match="expert 'medium' has samples = 3, which does not divide"):
        load_recipe(write_recipe(uneven))
