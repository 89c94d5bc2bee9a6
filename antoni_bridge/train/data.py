"""Training data in the HISTAI-Instruct HDF5 layout, and the token labels the loss is taken on.

    /embeddings/<key>/features   float32 (513, D)   the slide latents
    /embeddings/<key>/organ      utf-8 bytes         (optional)
    /text_attributes/<key>       utf-8 JSON          {"organ": ..., "<conversation key>": [{role, content}, ...]}

Each step a case contributes one of its conversations, chosen from the config's `text_attributes`
(all conversation-like keys when unset: the published loader ignores the filter; we honour it). The
choice depends only on (seed, epoch, case), so a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing

Turn = dict[str, str]
IGNORE = -100  # label of positions the loss skips: prompts, the image block, padding


@dataclass(frozen=True)
class Case:
    key: str
    latents: np.ndarray
    conversations: dict[str, list[Turn]]
    organ: str = ""


class InstructData:
    """The cases of one HDF5 file, with the conversations the filter allows (cases without any are skipped)."""

    def __init__(self, path: Path, text_attributes: tuple[str, ...] | None = None) -> None:
        self.path = path
        try:
            self.h5 = h5py.File(path, "r")
        except FileNotFoundError:
            raise BridgeError(f"No training data at {path}.", "build it with `antoni-bridge dataset build`") from None
        except OSError as exc:
            raise BridgeError(f"{path.name} is not a readable HDF5 file ({exc}).", "build it again") from exc
        if "embeddings" not in self.h5 or "text_attributes" not in self.h5:
            self.h5.close()
            raise BridgeError(
                f"{path.name} lacks the /embeddings and /text_attributes groups of the HISTAI-Instruct layout.",
                "build it with `antoni-bridge dataset build`",
            )
        self.keys: list[str] = []
        self.choices: list[list[str]] = []
        for key in sorted(self.h5["embeddings"]):
            usable = [
                name for name, turns in self._conversations(key).items() if is_trainable(name, turns, text_attributes)
            ]
            if usable:
                self.keys.append(key)
                self.choices.append(sorted(usable))
        if not self.keys:
            wanted = ", ".join(text_attributes) if text_attributes else "any conversation key"
            raise BridgeError(f"{path.name} has no case with a conversation for {wanted}.", "check text_attributes")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def latent_width(self) -> int:
        return int(self.h5["embeddings"][self.keys[0]]["features"].shape[-1])

    def example(self, index: int, epoch: int, seed: int) -> tuple[torch.Tensor, list[Turn]]:
        """The latents and the conversation case `index` contributes in `epoch`."""
        key = self.keys[index]
        name = random.Random(f"{seed}:{epoch}:{key}").choice(self.choices[index])
        latents = np.asarray(self.h5["embeddings"][key]["features"][()], dtype=np.float32)
        if latents.ndim != 2 or not np.isfinite(latents).all():
            raise BridgeError(f"{self.path.name}: the features of {key} are not a finite 2-D array.", "rebuild it")
        return torch.from_numpy(latents), self._conversations(key)[name]

    def case(self, key: str) -> Case:
        if key not in self.h5["embeddings"]:
            raise BridgeError(f"{self.path.name} has no case {key!r}.", "check the labels file's keys")
        latents = np.asarray(self.h5["embeddings"][key]["features"][()], dtype=np.float32)
        conversations = self._conversations(key)
        return Case(key, latents, {k: v for k, v in conversations.items() if isinstance(v, list)})

    def _conversations(self, key: str) -> dict[str, Any]:
        try:
            raw = self.h5["text_attributes"][key][()]
            value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            message = f"{self.path.name}: the text of case {key} is missing or not JSON ({exc})."
            raise BridgeError(message, "rebuild it") from exc
        if not isinstance(value, dict):
            raise BridgeError(f"{self.path.name}: the text of case {key} is not a JSON object.", "rebuild it")
        return value

    def close(self) -> None:
        self.h5.close()


def is_trainable(name: str, turns: Any, wanted: tuple[str, ...] | None) -> bool:
    """A conversation the filter allows that trains: user first, alternating, ending with the model."""
    if wanted is not None and name not in wanted:
        return False
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        return False
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    return all(
        isinstance(t, dict) and t.get("role") == r and isinstance(t.get("content"), str)
        for t, r in zip(turns, roles, strict=True)
    )


def write_instruct_data(path: Path, cases: list[Case]) -> None:
    """Write cases in the HISTAI-Instruct layout, to a temporary file renamed into place."""
    with replacing(path) as tmp, h5py.File(tmp, "w") as h5:
        embeddings, texts = h5.create_group("embeddings"), h5.create_group("text_attributes")
        for case in cases:
            group = embeddings.create_group(case.key)
            group.create_dataset("features", data=np.asarray(case.latents, dtype=np.float32))
            group.create_dataset("organ", data=case.organ.encode("utf-8"))
            text = {"organ": case.organ, **case.conversations}
            texts.create_dataset(case.key, data=json.dumps(text, ensure_ascii=False).encode("utf-8"))


def training_tokens(model: Any, conversation: list[Turn]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids and labels: only the model's turns (their text and `<end_of_turn>`) are learned."""
    ids = model.prompt_ids(conversation, add_generation_prompt=False)
    labels = torch.full_like(ids, IGNORE)
    values = ids.tolist()
    start_of_turn, end_of_turn = model.tokenizer.convert_tokens_to_ids("<start_of_turn>"), model.ids.end_of_turn
    i = 0
    while i < len(values):
        if values[i] == start_of_turn:
            header = _model_header_length(model.tokenizer, values, i + 1)
            if header:
                start = i + 1 + header
                end = values.index(end_of_turn, start) if end_of_turn in values[start:] else len(values) - 1
                labels[start : end + 1] = ids[start : end + 1]
                i = end
        i += 1
    return ids, labels


def _model_header_length(tokenizer: Any, values: list[int], start: int) -> int:
    """How many tokens after `<start_of_turn>` spell "model\\n" (0 when the turn is the user's)."""
    for length in range(1, 9):  # one token in Gemma's vocabulary, several in small ones
        text = tokenizer.decode(values[start : start + length])
        if text == "model\n":
            return length
        if not "model\n".startswith(text):
            return 0
    return 0
