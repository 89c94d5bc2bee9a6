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
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve_model_dir(source: str | os.PathLike[str], what: str, revision: str | None = None) -> Path:
    """A local folder holding `config.json` and weights for `source` (a path or a hub id).

    `revision` (a branch, tag or commit) selects the hub snapshot, weights included.
    """
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


def read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BridgeError(f"{path} is not readable JSON ({exc}).", "download the model again") from exc
    if not isinstance(values, dict):
        raise BridgeError(f"{path} does not hold a JSON object.", "download the model again")
    return values


def read_config(folder: Path) -> dict[str, Any]:
    return read_json(folder / "config.json")


def weight_files(folder: Path, what: str) -> list[Path]:
    """The weight files in `folder`: a sharded index's shards, or one safetensors or .bin file."""
    for index in INDEX_FILES:
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise BridgeError(f"{folder / index} is not a valid shard index ({exc}).", "download again") from exc
            files = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise BridgeError(f"Shards missing from {folder}: {', '.join(missing)}.", "download them again")
            return files
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise BridgeError(f"{folder} holds no {what} weights ({' or '.join(WEIGHT_FILES)}).", "download them again")


def read_state_dict(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors in `folder`: safetensors preferred, PyTorch .bin accepted (tensors only, no pickled code;
    memory-mapped, so a full 7 GB checkpoint is not read into RAM to take the parts we need)."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder, what):
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(file))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # truncated or foreign files raise many types
            raise BridgeError(f"The {what} weights {file} cannot be read ({exc}).", "download them again") from exc
    return state


def describe_keys(keys: list[str], limit: int = 5) -> str:
    """A short listing of state-dict keys for an error message."""
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def weights_identity(folder: Path) -> str:
    """Names, sizes and times of the config and weight files: changes when a folder's model is replaced."""
    digest = hashlib.sha256()
    for file in [folder / "config.json", *weight_files(folder, "model")]:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def prepare_cpu() -> None:
    """Flush denormal floats to zero on the CPU: random-weight and small-valued activations otherwise run
    matrix products 100x slower (940 ms against 5 ms for a demo prefill, measured)."""
    torch.set_flush_denormal(True)
