"""The training loss: summed cross-entropy over the model-turn tokens of a batch.

Only the supervised positions reach the vocabulary projection, and they reach it in chunks whose logits
are recomputed in the backward pass instead of kept: with MedGemma's 262k-token vocabulary, full
float32 logits for 16 x 800 tokens would take 13 GB, a chunk of 1024 tokens takes 1 GB.

The loss is a sum, not a mean, so the trainer can divide by the token count of the whole optimiser step
across every process: then gradient accumulation and data parallelism give the gradient of one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from antoni_bridge.model.antoni import AntoniModel
from antoni_bridge.train.data import IGNORE, InstructData, training_tokens

CHUNK_TOKENS = 1024


@dataclass
class Batch:
    latents: torch.Tensor  # (B, 513, D)
    ids: torch.Tensor  # (B, T), right-padded
    labels: torch.Tensor  # (B, T), IGNORE outside the model's turns

    @property
    def targets(self) -> int:
        """How many tokens the loss is taken on (each label predicts from the position before it)."""
        return int((self.labels[:, 1:] != IGNORE).sum())


def collate(model: AntoniModel, data: InstructData, indices: torch.Tensor, epoch: int, seed: int) -> Batch:
    """The cases at `indices`, each with the conversation drawn for this epoch, tokenised and padded."""
    examples = [data.example(int(i), epoch, seed) for i in indices]
    tokens = [training_tokens(model, conversation) for _, conversation in examples]
    width = max(len(ids) for ids, _ in tokens)
    ids = torch.full((len(tokens), width), model.ids.pad, dtype=torch.long)
    labels = torch.full((len(tokens), width), IGNORE, dtype=torch.long)
    for row, (row_ids, row_labels) in enumerate(tokens):
        ids[row, : len(row_ids)], labels[row, : len(row_labels)] = row_ids, row_labels
    return Batch(torch.stack([latents for latents, _ in examples]), ids, labels)


class SupervisedLoss(nn.Module):
    """The whole model as one module whose forward gives the summed token loss: what DDP wraps, so its
    gradient hooks see every trained parameter used."""

    def __init__(self, model: AntoniModel, autocast: bool) -> None:
        super().__init__()
        self.model = model
        self.autocast = autocast

    def forward(self, latents: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model, device = self.model, self.model.device
        ids, targets = ids.to(device), labels[:, 1:].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            image = model.projection_layer(latents.to(device, model.projection_layer.query_tokens.dtype))
            embeds = model.input_embeddings(ids, image)
            # token types all 0 ("text"): causal attention over the image block too, as published (transformers
            # 5.0 refuses to train Gemma 3 without token types)
            hidden = (
                model.llm.get_base_model()
                .model(
                    inputs_embeds=embeds,
                    attention_mask=(ids != model.ids.pad).long(),
                    token_type_ids=torch.zeros_like(ids),
                    use_cache=False,
                )
                .last_hidden_state
            )
            kept = targets != IGNORE
            return token_loss_sum(model.llm.get_output_embeddings(), hidden[:, :-1][kept], targets[kept])


def token_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ −log p(target) over rows of `hidden` (N, width), projected to the vocabulary a chunk at a time."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for rows, wanted in zip(hidden.split(CHUNK_TOKENS), targets.split(CHUNK_TOKENS), strict=True):
        total = total + checkpoint(_chunk_loss, head, rows, wanted, use_reentrant=False)
    return total


def _chunk_loss(head: nn.Module, rows: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(rows).float(), wanted, reduction="sum")
