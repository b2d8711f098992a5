"""Build recipes: one TOML file describes a whole cache (dataset, expert pool, prompts, depth,
metrics).

Parsing is strict: an unknown or mistyped key is an error naming the file and the key, because a
silently ignored typo (say `tempreature`) would change what a long build produces.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dersim.errors import RecipeError

# A recipe's name becomes the directory cache/<name>: no separators, no '..', no hidden names.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")

PAPER_KTP = (
    "There is an answer to the question from another student: {previous_answer}. "
    "You need to give a more satisfactory answer. DO NOT mention other students."
)
KNOWN_BACKENDS = ("llama_cpp", "synthetic", "openai")
KNOWN_METRICS = ("bertscore", "accuracy_yesno", "exact_match_number", "token_f1", "rouge_l")
KNOWN_SOURCES = ("bigbench", "table", "synthetic")
KNOWN_TASKS = ("strategyqa", "elementary_math_qa", "qa_wikidata")


@dataclass(frozen=True)
class DatasetSpec:
    """Where the questions come from and how they are split into train and test."""

    source: str
    path: Path
    task: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    train: int = 0
    test: int = 0
    seed: int = 0
    topics: tuple[str, ...] = ()  # source = "synthetic": the kinds of generated question


@dataclass(frozen=True)
class PromptSpec:
    """How a question and a previous answer become the text an expert sees."""

    question_template: str = "{question}"
    ktp_template: str = PAPER_KTP


@dataclass(frozen=True)
class ExpertSpec:
    """One expert of the pool; `options` holds backend-specific settings."""

    name: str
    backend: str
    params_b: float
    model: str = ""
    sha256: str = ""
    prompt_format: str = "chat"
    few_shot: str = ""
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy decoding, one answer per call
    top_p: float = 1.0
    samples: int = 1  # k: sampled answers per (state, expert), each its own call and seed
    stop: tuple[str, ...] = ()
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildSpec:
    """Expansion settings: depth D, retry policy, parallel calls and journal flushing."""

    depth: int = 2
    retries: int = 3
    backoff_s: float = 1.0
    concurrency: int = 1
    flush_every: int = 64


@dataclass(frozen=True)
class MetricSpec:
    """Which scores every state gets; BERTScore uses a local model at a fixed layer."""

    names: tuple[str, ...] = ("bertscore", "token_f1", "rouge_l")
    bertscore_model: str = "all-MiniLM-L6-v2"
    bertscore_layer: int = 6
    batch_size: int = 32  # BERTScore texts per forward pass (of equal token length: no padding)
    device: str = "auto"  # "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu", "cuda:0"


@dataclass(frozen=True)
class EmbeddingSpec:
    """The state embedding: a sentence-transformers model or feature hashing (for huge caches)."""

    model: str = "all-MiniLM-L6-v2"
    dim: int = 384
    batch_size: int = 64
    device: str = "auto"  # "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu", "cuda:0"


@dataclass(frozen=True)
class Recipe:
    """A whole build recipe, as read from TOML, with dataset paths resolved."""

    name: str
    path: Path
    dataset: DatasetSpec
    experts: tuple[ExpertSpec, ...]
    prompt: PromptSpec = PromptSpec()
    build: BuildSpec = BuildSpec()
    metrics: MetricSpec = MetricSpec()
    embedding: EmbeddingSpec = EmbeddingSpec()
    description: str = ""

    @property
    def sampled(self) -> bool:
        """Whether some expert draws several samples per call (the cache then records each
        transition's sample index)."""
        return any(e.samples > 1 for e in self.experts)

    def to_manifest(self) -> dict[str, Any]:
        """The recipe as plain JSON-able data, for the cache manifest."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["dataset"]["path"] = str(self.dataset.path)
        return data


def _take(
    table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any
) -> Any:
    """Pop `key` from `table`, checking its type; `where` names the file and table for errors."""
    if key not in table:
        if default is _REQUIRED:
            raise RecipeError(f"{where}: missing required key '{key}'")
        return default
    value = table.pop(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise RecipeError(
            f"{where}: key '{key}' must be {names}, got {type(value).__name__} {value!r}"
        )
    return value


_REQUIRED = object()


def _reject_leftovers(table: dict[str, Any], where: str) -> None:
    if table:
        raise RecipeError(f"{where}: unknown key '{sorted(table)[0]}'")


def _positive(value: int | float, key: str, where: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise RecipeError(
            f"{where}: key '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}"
        )


def _parse_dataset(raw: dict[str, Any], base: Path, where: str) -> DatasetSpec:
    t = dict(raw)
    source = _take(t, "source", str, where, _REQUIRED)
    if source not in KNOWN_SOURCES:
        raise RecipeError(
            f"{where}: key 'source' must be one of {', '.join(KNOWN_SOURCES)}, got '{source}'"
        )
    path = base / _take(t, "path", str, where, "" if source == "synthetic" else _REQUIRED)
    task = _take(t, "task", str, where, "")
    topics = _take(t, "topics", list, where, [])
    if source == "synthetic" and (
        not topics or not all(isinstance(w, str) and w.isalpha() for w in topics)
    ):
        raise RecipeError(
            f"{where}: key 'topics' must list the kinds of generated question (words of letters)"
        )
    if source == "bigbench" and task not in KNOWN_TASKS:
        raise RecipeError(
            f"{where}: key 'task' must be one of {', '.join(KNOWN_TASKS)}, got '{task}'"
        )
    columns = _take(t, "columns", dict, where, {})
    if source == "table" and "question" not in columns:
        raise RecipeError(f"{where}: key 'columns' must map at least 'question' to a column name")
    spec = DatasetSpec(
        source=source,
        path=path,
        task=task,
        columns={str(k): str(v) for k, v in columns.items()},
        train=_take(t, "train", int, where, _REQUIRED),
        test=_take(t, "test", int, where, _REQUIRED),
        seed=_take(t, "seed", int, where, 0),
        topics=tuple(w.lower() for w in topics),
    )
    _positive(spec.train, "train", where, allow_zero=True)
    _positive(spec.test, "test", where, allow_zero=True)
    if spec.train + spec.test == 0:
        raise RecipeError(f"{where}: 'train' + 'test' must be at least 1")
    _reject_leftovers(t, where)
    return spec


def _check_sampling(spec: ExpertSpec, where: str) -> None:
    """Greedy (temperature 0, one sample) or sampled (temperature > 0, k >= 1 seeded samples)."""
    if spec.samples < 1:
        raise RecipeError(f"{where}: key 'samples' must be >= 1, got {spec.samples}")
    if spec.temperature < 0:
        raise RecipeError(f"{where}: key 'temperature' must be >= 0, got {spec.temperature}")
    if not 0 < spec.top_p <= 1:
        raise RecipeError(f"{where}: key 'top_p' must be in (0, 1], got {spec.top_p}")
    if spec.temperature == 0 and (spec.samples > 1 or spec.top_p != 1):
        key = "samples" if spec.samples > 1 else "top_p"
        raise RecipeError(
            f"{where}: key '{key}' needs temperature > 0 (greedy decoding gives one answer)"
        )


def _parse_expert(raw: dict[str, Any], where: str) -> ExpertSpec:
    t = dict(raw)
    name = _take(t, "name", str, where, _REQUIRED)
    backend = _take(t, "backend", str, where, _REQUIRED)
    if backend not in KNOWN_BACKENDS:
        raise RecipeError(
            f"{where}: expert '{name}': unknown backend '{backend}' "
            f"(known: {', '.join(KNOWN_BACKENDS)})"
        )
    prompt_format = _take(t, "prompt_format", str, where, "chat")
    if prompt_format not in ("chat", "completion"):
        raise RecipeError(
            f"{where}: key 'prompt_format' must be 'chat' or 'completion', got '{prompt_format}'"
        )
    stop = _take(t, "stop", list, where, [])
    if not all(isinstance(s, str) for s in stop):
        raise RecipeError(f"{where}: key 'stop' must be a list of strings")
    spec = ExpertSpec(
        name=name,
        backend=backend,
        params_b=_take(t, "params_b", float, where, _REQUIRED),
        model=_take(t, "model", str, where, ""),
        sha256=_take(t, "sha256", str, where, "").lower(),
        prompt_format=prompt_format,
        few_shot=_take(t, "few_shot", str, where, ""),
        max_new_tokens=_take(t, "max_new_tokens", int, where, 64),
        temperature=_take(t, "temperature", float, where, 0.0),
        top_p=_take(t, "top_p", float, where, 1.0),
        samples=_take(t, "samples", int, where, 1),
        stop=tuple(stop),
        usd_per_mtok_in=_take(t, "usd_per_mtok_in", float, where, 0.0),
        usd_per_mtok_out=_take(t, "usd_per_mtok_out", float, where, 0.0),
        options=_take(t, "options", dict, where, {}),
    )
    _positive(spec.params_b, "params_b", where)
    _positive(spec.max_new_tokens, "max_new_tokens", where)
    _check_sampling(spec, where)
    if backend == "llama_cpp" and not spec.model:
        raise RecipeError(f"{where}: expert '{name}': the llama_cpp backend needs key 'model'")
    _reject_leftovers(t, where)
    return spec


def _parse_section(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Parse a flat table into dataclass `cls`, type-checking each field against its default."""
    t = dict(raw)
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for name, default in asdict(defaults).items():
        if isinstance(default, (list, tuple)):
            value = _take(t, name, list, where, list(default))
            kwargs[name] = tuple(value)
        else:
            kind: type | tuple[type, ...] = float if isinstance(default, float) else type(default)
            kwargs[name] = _take(t, name, kind, where, default)
    _reject_leftovers(t, where)
    return cls(**kwargs)


def parse_recipe(data: dict[str, Any], path: Path) -> Recipe:
    """Validate a recipe's TOML data; relative dataset paths resolve against the recipe's folder."""
    t = dict(data)
    where = str(path)
    name = _take(t, "name", str, where, path.stem)
    if not PLAIN_NAME.fullmatch(name):
        raise RecipeError(
            f"{where}: name {name!r} must be a plain name (letters, digits, '.', '_', '-'; no path "
            "separators, not starting with '.'): it names the cache directory cache/<name>"
        )
    description = _take(t, "description", str, where, "")
    dataset = _parse_dataset(
        _take(t, "dataset", dict, where, _REQUIRED), path.parent, f"{where} [dataset]"
    )
    raw_experts = _take(t, "experts", list, where, _REQUIRED)
    if not raw_experts:
        raise RecipeError(f"{where}: [[experts]] must list at least one expert")
    experts = tuple(
        _parse_expert(e if isinstance(e, dict) else {}, f"{where} [[experts]] #{i + 1}")
        for i, e in enumerate(raw_experts)
    )
    largest = max(e.samples for e in experts)
    uneven = next((e for e in experts if largest % e.samples), None)
    if uneven is not None:
        raise RecipeError(
            f"{where}: expert '{uneven.name}' has samples = {uneven.samples}, which does not "
            f"divide the largest ({largest}): the env draws one of {largest} children per call"
        )
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise RecipeError(f"{where}: expert name '{dup}' appears twice in [[experts]]")
    prompt = _parse_section(PromptSpec, _take(t, "prompt", dict, where, {}), f"{where} [prompt]")
    if "{previous_answer}" not in prompt.ktp_template:
        raise RecipeError(
            f"{where} [prompt]: key 'ktp_template' must contain '{{previous_answer}}'"
        )
    if "{question}" not in prompt.question_template:
        raise RecipeError(f"{where} [prompt]: key 'question_template' must contain '{{question}}'")
    build = _parse_section(BuildSpec, _take(t, "build", dict, where, {}), f"{where} [build]")
    for key in ("depth", "concurrency", "flush_every"):
        _positive(getattr(build, key), key, f"{where} [build]")
    metrics = _parse_section(MetricSpec, _take(t, "metrics", dict, where, {}), f"{where} [metrics]")
    unknown = [m for m in metrics.names if m not in KNOWN_METRICS]
    if unknown or not metrics.names:
        raise RecipeError(
            f"{where} [metrics]: unknown metric '{unknown[0] if unknown else ''}' "
            f"(known: {', '.join(KNOWN_METRICS)})"
        )
    embedding = _parse_section(
        EmbeddingSpec, _take(t, "embedding", dict, where, {}), f"{where} [embedding]"
    )
    _positive(metrics.batch_size, "batch_size", f"{where} [metrics]")
    _positive(embedding.batch_size, "batch_size", f"{where} [embedding]")
    _reject_leftovers(t, where)
    return Recipe(
        name=name,
        path=path,
        dataset=dataset,
        experts=experts,
        prompt=prompt,
        build=build,
        metrics=metrics,
        embedding=embedding,
        description=description,
    )


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a TOML recipe file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    return parse_recipe(data, path.resolve())
