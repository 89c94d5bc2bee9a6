"""Training configuration: a YAML file over the published defaults of its stage.

Every field is checked before a model loads, so a typo fails in a second with the field's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from antoni_bridge.errors import BridgeError


@dataclass(frozen=True)
class TrainConfig:
    stage: int
    train_data: Path
    output_dir: Path
    llm: str
    val_data: Path | None = None
    weights: str | None = None
    quant: str = "auto"
    learning_rate: float = 3e-4
    epochs: int = 35
    batch_size: int = 16
    gradient_accumulation: int = 4
    weight_decay: float = 0.001
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    projector_dropout: float = 0.1
    lora_dropout: float | None = None  # None: as the weights' config (0.05 published)
    gradient_checkpointing: bool = True
    text_attributes: tuple[str, ...] | None = None
    save_every: int = 500
    eval_every: int = 500
    seed: int = 0
    max_steps: int | None = None


def default_config(stage: int) -> dict[str, Any]:
    text = resources.files("antoni_bridge.train").joinpath(f"configs/stage{stage}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def read_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config at `path` over its stage's defaults; relative paths are taken from the file's folder."""
    try:
        given = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise BridgeError(f"No training config at {path}.", "start from antoni_bridge/train/configs/") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BridgeError(f"The config {path.name} is not readable YAML ({exc}).", "check its syntax") from exc
    if not isinstance(given, dict):
        raise BridgeError(f"The config {path.name} is not a mapping of fields.", "write `field: value` lines")
    given |= overrides or {}
    stage = given.get("stage", 1)
    if stage not in (1, 2):
        raise BridgeError(f"stage is {stage!r}; it must be 1 or 2.", "1 aligns the projector, 2 tunes LoRA")
    values = default_config(stage) | given
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise BridgeError(
            f"Unknown config field(s): {', '.join(unknown)}.", f"known fields: {', '.join(sorted(fields))}"
        )
    return _checked(values, path.parent)


def _checked(values: dict[str, Any], base: Path) -> TrainConfig:
    numbers = {
        "learning_rate": (float, 0, 1),
        "epochs": (int, 1, 10_000),
        "batch_size": (int, 1, 4096),
        "gradient_accumulation": (int, 1, 4096),
        "weight_decay": (float, 0, 1),
        "warmup_ratio": (float, 0, 1),
        "grad_clip": (float, 0, 1e6),
        "projector_dropout": (float, 0, 1),
        "save_every": (int, 1, 10**9),
        "eval_every": (int, 1, 10**9),
    }
    for name, (kind, low, high) in numbers.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise BridgeError(f"{name} is {value!r}; it must be a number in [{low}, {high}].", "fix the config")
        values[name] = kind(value)
    if values["max_steps"] is not None and (not isinstance(values["max_steps"], int) or values["max_steps"] < 1):
        raise BridgeError(f"max_steps is {values['max_steps']!r}; it must be a positive integer or null.", "fix it")
    if values["lora_dropout"] is not None:
        dropout = values["lora_dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise BridgeError(f"lora_dropout is {dropout!r}; it must be null or a number in [0, 1).", "fix the config")
        values["lora_dropout"] = float(dropout)
    if not isinstance(values["gradient_checkpointing"], bool):
        raise BridgeError("gradient_checkpointing must be true or false.", "fix the config")
    if values["quant"] not in ("auto", "4bit", "bf16", "none"):
        raise BridgeError(f"quant is {values['quant']!r}.", "use auto, 4bit, bf16 or none")
    keys = values["text_attributes"]
    if keys is not None:
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise BridgeError("text_attributes must be null or a list of conversation keys.", "e.g. [short_vqa]")
        values["text_attributes"] = tuple(keys)
    for name in ("train_data", "val_data", "output_dir"):
        if values[name] is not None:
            values[name] = (base / Path(values[name]).expanduser()).resolve()
    if values["weights"] is not None and (base / values["weights"]).exists():
        values["weights"] = str((base / values["weights"]).resolve())
    if values["llm"] is not None and (base / values["llm"]).exists():
        values["llm"] = str((base / values["llm"]).resolve())
    return TrainConfig(**values)
