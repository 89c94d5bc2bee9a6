"""The training loop: stage 1 trains the projector, stage 2 also the LoRA matrices and the trained
embedding/head copies. AdamW, cosine schedule with warmup, gradient clipping and accumulation, bf16
autocast on CUDA, validation loss, checkpoints with exact resume.

Exact resume: a checkpoint is taken at an optimiser-step boundary and holds the trained weights (in the
published layout, so `serve --weights` loads any checkpoint), the optimiser, the scheduler, every random
generator and the data position. The data order depends only on (seed, epoch), so the resumed run
continues the very loss curve the uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from antoni_bridge.errors import BridgeError
from antoni_bridge.model.antoni import TRAINED_MARKERS, AntoniModel
from antoni_bridge.train.config import TrainConfig
from antoni_bridge.train.data import IGNORE, InstructData, training_tokens

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class Position:
    """Where training stands: optimiser steps taken, and the next micro-batch of which epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def load_model(config: TrainConfig, latent_width: int, device: torch.device) -> AntoniModel:
    """The model to train: from `weights` (e.g. the newest stage-1 checkpoint), or a fresh projector and
    zero LoRA on `llm`."""
    from antoni_bridge.encoders.sources import resolve_model_dir
    from antoni_bridge.model.config import AntoniConfig
    from antoni_bridge.model.llm import load_llm

    seed_everything(config.seed)  # the fresh projector and LoRA matrices are drawn from it
    if config.weights:
        model = AntoniModel.load(
            resolve_model_dir(config.weights, "ANTONI-Alpha weights"), config.llm, device, config.quant
        )
    else:
        fresh = AntoniConfig(llm_model_id=config.llm, projector_input_dim=latent_width)
        model = AntoniModel(fresh, load_llm(config.llm, device, config.quant))
    model.config = replace(model.config, llm_model_id=config.llm, projector_dropout=config.projector_dropout)
    model.projection_layer.dropout = config.projector_dropout
    if model.config.projector_input_dim != latent_width:
        raise BridgeError(
            f"The data's latents are {latent_width} wide; the projector takes {model.config.projector_input_dim}.",
            "train on latents made by the same slide encoder",
        )
    return model


def trainable(name: str, stage: int) -> bool:
    return name.startswith("projection_layer.") or (stage == 2 and any(m in name for m in TRAINED_MARKERS))


class Trainer:
    def __init__(self, config: TrainConfig, model: AntoniModel, data: InstructData, val: InstructData | None) -> None:
        self.config, self.model, self.data, self.val = config, model, data, val
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable(name, config.stage))
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.batches_per_epoch = math.ceil(len(data) / config.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        warmup = max(1, round(config.warmup_ratio * config.epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _cosine_with_warmup(warmup, self.total_steps)
        )
        self.position = Position()
        self.board = _tensorboard(config.output_dir)
        seed_everything(config.seed)  # a fresh run is reproducible; `resume` restores the generators instead

    # ------------------------------------------------------------------ the loop

    def run(self, on_step: Callable[[dict[str, Any]], None] = lambda _: None) -> Path:
        """Train to the end (or `max_steps`) and return the final weights folder."""
        config = self.config
        self.model.train()
        position = self.position
        while position.step < self.total_steps and position.epoch < config.epochs:
            batches = self._batches(position.epoch)
            while position.batch < len(batches) and position.step < self.total_steps:
                group = batches[position.batch : position.batch + config.gradient_accumulation]
                metrics = self._optimiser_step(group)
                position.batch += len(group)
                position.step += 1
                metrics |= {"step": position.step, "epoch": position.epoch}
                if self.val is not None and position.step % config.eval_every == 0:
                    metrics["val_loss"] = self.validation_loss()
                self._log(metrics)
                on_step(metrics)
                if position.step % config.save_every == 0:
                    self.save_checkpoint()
            if position.batch >= len(batches):
                position.epoch, position.batch = position.epoch + 1, 0
        final = config.output_dir / "final"
        self._write_atomically(final, with_state=False)
        return final

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.config.seed + epoch))
        return list(order.split(self.config.batch_size))

    def _optimiser_step(self, group: list[torch.Tensor]) -> dict[str, Any]:
        """One optimiser step over `group` micro-batches (gradient accumulation)."""
        start, losses = time.perf_counter(), []
        for indices in group:
            loss = self.batch_loss(indices, self.position.epoch)
            (loss / len(group)).backward()
            losses.append(float(loss.detach()))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": sum(losses) / len(losses),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "seconds": time.perf_counter() - start,
        }

    def batch_loss(self, indices: torch.Tensor, epoch: int, data: InstructData | None = None) -> torch.Tensor:
        """Mean cross-entropy over the model-turn tokens of a batch (right-padded)."""
        data = data or self.data
        model, device = self.model, self.model.device
        examples = [data.example(int(i), epoch, self.config.seed) for i in indices]
        tokens = [training_tokens(model, conversation) for _, conversation in examples]
        width = max(len(ids) for ids, _ in tokens)
        ids = torch.full((len(tokens), width), model.ids.pad, dtype=torch.long)
        labels = torch.full((len(tokens), width), IGNORE, dtype=torch.long)
        for row, (row_ids, row_labels) in enumerate(tokens):
            ids[row, : len(row_ids)], labels[row, : len(row_labels)] = row_ids, row_labels
        latents = torch.stack([latents for latents, _ in examples]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            image = model.projection_layer(latents.to(model.projection_layer.query_tokens.dtype))
            embeds = model.input_embeddings(ids, image)
            logits = model.llm(inputs_embeds=embeds, attention_mask=(ids != model.ids.pad).long().to(device)).logits
        targets = labels[:, 1:].to(device)
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
        )

    @torch.no_grad()
    def validation_loss(self) -> float:
        self.model.eval()
        try:
            batches = torch.arange(len(self.val)).split(self.config.batch_size)
            losses = [float(self.batch_loss(indices, 0, self.val)) * len(indices) for indices in batches]
            return sum(losses) / len(self.val)
        finally:
            self.model.train()

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        folder = self.config.output_dir / f"checkpoint-{self.position.step}"
        self._write_atomically(folder, with_state=True)
        return folder

    def _write_atomically(self, folder: Path, with_state: bool) -> None:
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save(tmp)
        if with_state:
            torch.save(self._state(), tmp / STATE_FILE)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": vars(self.position).copy(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
            "stage": self.config.stage,
        }

    def resume(self) -> Path | None:
        """Continue from the newest checkpoint in the output folder, if any; return it."""
        numbered = [(int(p.name[11:]), p) for p in self.config.output_dir.glob("checkpoint-*") if p.name[11:].isdigit()]
        checkpoints = [p for _, p in sorted(numbered)]
        if not checkpoints:
            return None
        newest = checkpoints[-1]
        from antoni_bridge.encoders.sources import read_state_dict

        state = torch.load(newest / STATE_FILE, map_location="cpu", weights_only=False)  # our own file
        if state["stage"] != self.config.stage:
            raise BridgeError(f"{newest} is a stage {state['stage']} checkpoint.", "use another output_dir")
        self.model.load_trained(read_state_dict(newest, "checkpoint"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(**state["position"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        self._truncate_log(self.position.step)
        return newest

    # ------------------------------------------------------------------ metrics

    def _log(self, metrics: dict[str, Any]) -> None:
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.config.output_dir / METRICS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics) + "\n")
        if self.board is not None:
            for name in ("loss", "lr", "grad_norm", "val_loss"):
                if name in metrics:
                    self.board.add_scalar(name, metrics[name], metrics["step"])

    def _truncate_log(self, step: int) -> None:
        """Drop what an interrupted run logged after its last checkpoint; the resumed run logs it again."""
        log = self.config.output_dir / METRICS_FILE
        if log.is_file():
            kept = [line for line in log.read_text().splitlines() if _logged_step(line) <= step]
            log.write_text("".join(f"{line}\n" for line in kept))


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _tensorboard(folder: Path) -> Any:
    """A TensorBoard writer when TensorBoard is installed (the JSONL log is always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor
