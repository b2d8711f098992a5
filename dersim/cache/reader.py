"""Opening a cache directory: the manifest and all three tables, checked (`check.read_checked`),
as polars frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dersim.cache.check import read_checked
from dersim.cache.files import read_columns, read_manifest, table_schemas
from dersim.cache.schema import QUESTIONS, STATES, TRANSITIONS


@dataclass(frozen=True)
class Cache:
    """A loaded cache: its manifest and its three tables as polars frames."""

    path: Path
    manifest: dict[str, Any]
    questions: pl.DataFrame
    states: pl.DataFrame
    transitions: pl.DataFrame

    @property
    def expert_names(self) -> list[str]:
        return [e["name"] for e in self.manifest["experts"]]

    @property
    def depth(self) -> int:
        return int(self.manifest["depth"])

    @property
    def metric_columns(self) -> list[str]:
        return list(self.manifest["metric_columns"])


def open_cache(directory: str | Path, *, check: bool = True, verify_hashes: bool = True) -> Cache:
    """Load a cache: manifest and tables, with their columns and types checked. With `check` (the
    default) the table files are also checked by `read_checked` (hashes unless `verify_hashes` is
    False, ids, scores, embeddings); `dersim cache verify` checks it deeply."""
    directory = Path(directory)
    schemas = table_schemas(read_manifest(directory))
    if check:
        manifest, tables = read_checked(
            directory,
            {name: schema.names for name, schema in schemas.items()},
            verify_hashes=verify_hashes,
        )
    else:
        manifest = read_manifest(directory)
        tables = {
            name: read_columns(directory / name, schema.names) for name, schema in schemas.items()
        }
    frames = {name: pl.from_arrow(table) for name, table in tables.items()}
    return Cache(directory, manifest, *(frames[name] for name in (QUESTIONS, STATES, TRANSITIONS)))  # type: ignore[arg-type]
