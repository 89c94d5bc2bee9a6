"""ANTONI-Alpha's configuration, field for field as in the published `config.json` (model_type `antoni_alpha`).

`llm_hidden_size` is kept for compatibility but never used: the real width is read from the LLM
(the published default of 2048 is wrong for MedGemma-4B, whose width is 2560). `projector_input_dim`
is ours: 1280 for Prism latents, smaller for the demo encoders; published files do not have it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from antoni_bridge.encoders.sources import read_config
from antoni_bridge.errors import BridgeError

MODEL_TYPE = "antoni_alpha"


@dataclass
class AntoniConfig:
    llm_model_id: str = "google/medgemma-4b-it"
    llm_hidden_size: int = 2048
    projector_input_dim: int = 1280
    projector_num_output_tokens: int = 256
    projector_num_query_heads: int = 8
    projector_num_kv_heads: int = 8
    projector_dropout: float = 0.1
    projector_ffn_hidden_dim: int | None = None
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_r: int = 16
    lora_bias: str = "none"
    lora_target_modules: str | list[str] = "all-linear"
    lora_task_type: str = "CAUSAL_LM"
    lora_modules_to_save: list[str] = field(default_factory=lambda: ["lm_head", "embed_tokens"])
    initializer_range: float = 0.02
    model_type: str = MODEL_TYPE
    demo: bool = False  # ours: demo weights say so wherever an answer is shown

    @classmethod
    def read(cls, folder: Path) -> AntoniConfig:
        values = read_config(folder)
        if values.get("model_type") != MODEL_TYPE:
            raise BridgeError(
                f"{folder} holds a {values.get('model_type') or 'model of unknown type'}, not ANTONI-Alpha.",
                "give SaltySander/ANTONI-Alpha or a folder made by antoni-bridge (train or make-demo-weights)",
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
