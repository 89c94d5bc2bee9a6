"""The training loop: stage 1 trains the projector, stage 2 also the LoRA matrices and the trained
embedding/head copies. AdamW, cosine schedule with warmup, gradient clipping and accumulation, bf16
autocast, gradient checkpointing, validation loss, checkpoints with exact resume, and data parallelism
over the processes that `accelerate launch` starts (one per GPU; gloo processes on a CPU-only machine).

One optimiser step takes `gradient_accumulation` micro-batches of `batch_size` cases on each process.
The loss is the token mean over all of them (their summed loss divided by their token count across every
process), so the gradient does not depend on how the step is split into processes or micro-batches.

Exact resume: a checkpoint is taken at an optimiser-step boundary and holds the trained weights (in the
published layout, so `serve --weights` loads any checkpoint), the optimiser, the scheduler, every random
generator of every process and the data position. The data order depends only on (seed, epoch), so the
resumed run continues the very loss curve the uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing_folder
from antoni_bridge.model.antoni import TRAINED_MARKERS, AntoniModel
from antoni_bridge.train.config import TrainConfig
from antoni_bridge.train.data import InstructData
from antoni_bridge.train.loss import Batch, SupervisedLoss, collate

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"
SLIDE_UNUSED = (".vision_tower.", ".multi_modal_projector.")  # MedGemma's own image path: no slide gradient


@dataclass
class Position:
    """Where training stands: optimiser steps taken, and the next micro-batch of which epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def accelerator() -> Any:
    """This process's place among those `accelerate launch` started (alone when started plainly)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def agreed_quant(requested: str, processes: Any) -> str:
    """One precision for every process: "auto" decides per GPU from its free memory, and DDP needs the
    same weights everywhere, so 4-bit wins if any process needs it."""
    from accelerate.utils import gather_object

    from antoni_bridge.model.llm import choose_quant

    mine = choose_quant(requested, processes.device)
    if processes.num_processes == 1:
        return mine
    return "4bit" if "4bit" in gather_object([mine]) else mine


def load_model(config: TrainConfig, latent_width: int, device: torch.device) -> AntoniModel:
    """The model to train: from `weights` (e.g. the newest stage-1 checkpoint), or a fresh projector and
    zero LoRA on `llm`. The config's dropouts are set before the model is built, so peft builds its LoRA
    dropout layers with them."""
    from antoni_bridge.encoders.sources import read_state_dict, resolve_model_dir
    from antoni_bridge.model.config import AntoniConfig
    from antoni_bridge.model.llm import load_llm

    folder = resolve_model_dir(config.weights, "ANTONI-Alpha weights") if config.weights else None
    base = AntoniConfig.read(folder) if folder else AntoniConfig(projector_input_dim=latent_width)
    if base.projector_input_dim != latent_width:  # checked before the language model loads
        raise BridgeError(
            f"The data's latents are {latent_width} wide; the projector takes {base.projector_input_dim}.",
            "train on latents made by the same slide encoder",
        )
    dropouts = {"projector_dropout": config.projector_dropout}
    if config.lora_dropout is not None:
        dropouts["lora_dropout"] = config.lora_dropout
    seed_everything(config.seed)  # the fresh projector and LoRA matrices are drawn from it, alike in every process
    model = AntoniModel(replace(base, llm_model_id=config.llm, **dropouts), load_llm(config.llm, device, config.quant))
    if folder:  # not AntoniModel.load: that rounds the trained parts to bf16 for inference
        model.load_trained(read_state_dict(folder, "ANTONI-Alpha"))
    return model


def trainable(name: str, stage: int) -> bool:
    if name.startswith("projection_layer."):
        return True
    return stage == 2 and any(m in name for m in TRAINED_MARKERS) and not any(u in name for u in SLIDE_UNUSED)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        model: AntoniModel,
        data: InstructData,
        val: InstructData | None,
        processes: Any = None,
    ) -> None:
        self.config, self.model, self.data, self.val = config, model, data, val
        self.processes = processes or accelerator()
        self.parameters = _trained_parameters(model, config.stage)
        if config.gradient_checkpointing:
            _recompute_activations(model.llm.get_base_model())
        autocast = model.device.type == "cuda" or model.loaded.quant != "none"
        self.loss = SupervisedLoss(model, autocast)
        self.wrapped = self.processes.prepare_model(self.loss, device_placement=False)  # DDP when several processes run
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        world = self.processes.num_processes
        self.batches_per_epoch = math.ceil(len(data) / (config.batch_size * world))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        warmup = max(1, round(config.warmup_ratio * config.epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _cosine_with_warmup(warmup, self.total_steps)
        )
        self.position = Position()
        main = self.processes.is_main_process
        self.board = _tensorboard(config.output_dir) if main else None
        seed_everything(config.seed + self.processes.process_index)  # dropout differs between processes

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
        self._write(final, state=None)
        return final

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        """This epoch's micro-batches, each `batch_size` cases for every process."""
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.config.seed + epoch))
        return list(order.split(self.config.batch_size * self.processes.num_processes))

    def _share(self, indices: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's part of a micro-batch, and the weight of its loss. A process left without cases
        (a short last micro-batch) runs one case with weight 0, for every process must run each step."""
        part = indices.tensor_split(self.processes.num_processes)[self.processes.process_index]
        return (part, 1.0) if len(part) else (indices[:1], 0.0)

    def _optimiser_step(self, group: list[torch.Tensor]) -> dict[str, Any]:
        """One optimiser step over `group` micro-batches (gradient accumulation)."""
        start = time.perf_counter()
        shares = [self._share(indices) for indices in group]
        batches = [collate(self.model, self.data, part, self.position.epoch, self.config.seed) for part, _ in shares]
        tokens = self._sum(sum(batch.targets * weight for batch, (_, weight) in zip(batches, shares, strict=True)))
        scale = self.processes.num_processes / max(tokens, 1)  # DDP averages the processes' gradients
        loss_sum = 0.0
        for i, (batch, (_, weight)) in enumerate(zip(batches, shares, strict=True)):
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last else self.processes.no_sync(self.wrapped):
                loss = self.wrapped(batch.latents, batch.ids, batch.labels) * weight
                (loss * scale).backward()
            loss_sum += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": self._sum(loss_sum) / max(tokens, 1),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "seconds": time.perf_counter() - start,
        }

    def batch_loss(self, batch: Batch) -> torch.Tensor:
        """Token-mean loss of one batch in this process (validation and benchmarks)."""
        return self.loss(batch.latents, batch.ids, batch.labels) / max(batch.targets, 1)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Token-mean loss over the whole validation set, shared out among the processes."""
        self.model.eval()
        try:
            loss_sum, tokens = 0.0, 0
            for indices in torch.arange(len(self.val)).split(self.config.batch_size * self.processes.num_processes):
                part, weight = self._share(indices)
                if weight:
                    batch = collate(self.model, self.val, part, 0, self.config.seed)
                    loss_sum += float(self.loss(batch.latents, batch.ids, batch.labels))
                    tokens += batch.targets
            return self._sum(loss_sum) / max(self._sum(tokens), 1)
        finally:
            self.model.train()

    def _sum(self, value: float) -> float:
        """`value` summed over every process."""
        if self.processes.num_processes == 1:
            return value
        total = torch.tensor(float(value), dtype=torch.float64, device=self.processes.device)
        return float(self.processes.reduce(total, reduction="sum"))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        folder = self.config.output_dir / f"checkpoint-{self.position.step}"
        self._write(folder, state=self._state())
        return folder

    def _write(self, folder: Path, state: dict[str, Any] | None) -> None:
        """Write a weights folder from the main process, whole or not at all: an older folder of the same
        name is moved aside, not deleted, until the new one is in place."""
        if self.processes.is_main_process:
            with replacing_folder(folder) as tmp:
                self.model.save(tmp)
                if state is not None:
                    torch.save(state, tmp / STATE_FILE)
        self.processes.wait_for_everyone()

    def _state(self) -> dict[str, Any]:
        """Everything beyond the weights that exact resume needs (called in every process: it gathers their
        random generators)."""
        from accelerate.utils import gather_object

        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        }
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": vars(self.position).copy(),
            "rng": gather_object([rng]) if self.processes.num_processes > 1 else [rng],
            "layout": self._layout(),
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
        written = state.get("layout", {"processes": 1})  # checkpoints before data parallelism have none
        changed = {k: v for k, v in written.items() if self._layout()[k] != v}
        if changed:
            raise BridgeError(
                f"{newest} was written with {_settings(written)}; this run has {_settings(self._layout())}.",
                f"resume with {_settings(changed)}, or pass --restart",
            )
        self.model.load_trained(read_state_dict(newest, "checkpoint"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(**state["position"])
        rng = state["rng"]
        rng = rng[self.processes.process_index] if isinstance(rng, list) else rng
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        if self.processes.is_main_process:
            self._truncate_log(self.position.step)
        return newest

    def _layout(self) -> dict[str, int]:
        """What fixes the data position's meaning: a checkpoint resumes only under the same."""
        return {
            "processes": self.processes.num_processes,
            "batch_size": self.config.batch_size,
            "gradient_accumulation": self.config.gradient_accumulation,
        }

    # ------------------------------------------------------------------ metrics

    def _log(self, metrics: dict[str, Any]) -> None:
        if not self.processes.is_main_process:
            return
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
            kept = [line for line in log.read_text(encoding="utf-8").splitlines() if _logged_step(line) <= step]
            log.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _settings(layout: dict[str, int]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in layout.items())


def _trained_parameters(model: AntoniModel, stage: int) -> list[nn.Parameter]:
    """Freeze all but this stage's parameters; those are kept in float32 (an update of 3e-5 vanishes when
    added to a bf16 weight), the frozen base stays bf16 or 4-bit."""
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable(name, stage))
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
            trained.append(parameter)
    return trained


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


def _recompute_activations(llm: Any) -> None:
    """Gradient checkpointing: transformers 5.23 renamed it activation checkpointing (the old name warns and
    goes in v6); older 5.x have only the old name."""
    enable = getattr(llm, "activation_checkpointing_enable", None) or llm.gradient_checkpointing_enable
    enable({"use_reentrant": False})
