"""Finding model weights: a local folder, the Hugging Face cache, or (when allowed) the hub.

Gated models (Virchow, Prism, MedGemma, ANTONI-Alpha) fail in many ways; each is turned into one
sentence that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from antoni_bridge.errors import BridgeError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_dir(source: str | os.PathLike[str], what: str, revision: str | None = None) -> Path:
    """A local folder holding `config.json` and weights for `source` (a path or a hub id)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise BridgeError(
                f"{path} is not a {what} folder (it has no config.json).",
                "give the folder that holds config.json and the weights, or a Hugging Face id",
            )
        return path
    source = str(source)
    if source.count("/") != 1 or source.startswith(("/", ".", "~")):
        raise BridgeError(f"No {what} at {source}.", "give an existing folder or a Hugging Face id like org/name")
    return _from_hub(source, what, revision)


def _from_hub(repo_id: str, what: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now: the hub library reads it only at import
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise BridgeError(
            f"The {what} {repo_id} is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE).",
            f"download it once on a connected machine (hf download {repo_id}) or give a local folder",
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir))
    except GatedRepoError:
        raise BridgeError(
            f"The {what} {repo_id} is gated and this machine's Hugging Face account has no access.",
            f"accept its terms at https://huggingface.co/{repo_id}, then log in with `hf auth login`",
        ) from None
    except RepositoryNotFoundError:
        raise BridgeError(
            f"Hugging Face has no {what} called {repo_id} (or it is private).",
            "check the id; for a private or gated model log in with `hf auth login`",
        ) from None
    except Exception as exc:  # network stacks raise many types
        raise BridgeError(
            f"Could not download the {what} {repo_id} ({type(exc).__name__}).",
            "check the network, or download it elsewhere and give the local folder",
        ) from exc


def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BridgeError(f"{folder / 'config.json'} is not readable JSON ({exc}).", "download it again") from exc


def read_state_dict(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """The weights in `folder`: safetensors preferred, PyTorch .bin accepted (loaded without pickle code)."""
    for name in WEIGHT_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(file)
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign files raise many types
            raise BridgeError(f"The {what} weights {file} cannot be read ({exc}).", "download them again") from exc
    raise BridgeError(f"{folder} holds no {what} weights ({' or '.join(WEIGHT_FILES)}).", "download them again")


def describe_keys(keys: list[str], limit: int = 5) -> str:
    """A short listing of state-dict keys for an error message."""
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def weights_identity(folder: Path) -> str:
    """Names, sizes and times of the weight files: changes when the weights in a folder are replaced."""
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        file = folder / name
        if file.is_file():
            stat = file.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
