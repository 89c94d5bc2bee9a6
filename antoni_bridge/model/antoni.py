"""ANTONI-Alpha: Prism latents -> projector -> 256 image tokens inside MedGemma's prompt, with LoRA.

Loading is strict: the projector, every LoRA matrix and the trained embedding/head copies must come
from the checkpoint (named as published, `projection_layer.*` and `llm.base_model.model...`); the
frozen base weights come from the language model itself. A missing or unexpected key is named in the
error, and a model with randomly initialised parts is never returned.

Slide mode follows the published code: the image tokens' embeddings are replaced by the projector
output (no rescaling), attention is causal over them, the prompt has two BOS tokens. View mode asks
MedGemma itself about an RGB field of view through its own SigLIP tower, with the adapter switched
off, on the weights already loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from antoni_bridge.encoders.sources import describe_keys, read_state_dict
from antoni_bridge.errors import BridgeError
from antoni_bridge.model import prompt
from antoni_bridge.model.config import AntoniConfig
from antoni_bridge.model.generation import (
    CachedPrefix,
    Generated,
    GenerationOptions,
    PrefixCache,
    timed_decode,
)
from antoni_bridge.model.llm import LoadedLLM, kv_cache, load_llm
from antoni_bridge.model.projector import AttentionPoolingProjector

TRAINED_MARKERS = (".lora_A.", ".lora_B.", ".modules_to_save.")
LATENT_ROWS = 513  # Prism: the slide embedding, then 512 image latents
NESTED_TOWER = ".vision_tower.vision_model."


@dataclass(frozen=True)
class ChoiceScores:
    choices: list[str]
    mean_nll: list[float]  # per choice: mean negative log-likelihood of its tokens (lower is likelier)

    @property
    def best(self) -> str:
        return self.choices[int(np.argmin(self.mean_nll))]


class AntoniModel(nn.Module):
    def __init__(self, config: AntoniConfig, llm: LoadedLLM) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.config = config
        self.tokenizer = llm.tokenizer
        self.loaded = llm
        self.ids = prompt.SpecialIds.of(llm.tokenizer)
        width = llm.model.config.get_text_config().hidden_size
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            bias=config.lora_bias,
            target_modules=config.lora_target_modules,
            task_type=config.lora_task_type,
            modules_to_save=list(config.lora_modules_to_save),
        )
        self.llm = get_peft_model(llm.model, lora)
        device = next(llm.model.parameters()).device
        self.projection_layer = AttentionPoolingProjector(config, width).to(device)
        self.prefixes = PrefixCache()
        self.eval()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        weights: Path,
        llm_source: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        quant: str = "auto",
    ) -> AntoniModel:
        """ANTONI-Alpha from a resolved weights folder and its language model."""
        config = AntoniConfig.read(weights)
        source = llm_source or _relative_or_id(weights, config.llm_model_id)
        model = cls(config, load_llm(source, torch.device(device), quant))
        model.load_trained(read_state_dict(weights, "ANTONI-Alpha"))
        if model.loaded.quant != "none":
            model._to_bf16()
        model.park_view_weights()
        return model

    def load_trained(self, state: dict[str, torch.Tensor]) -> None:
        """Load the trained parts strictly, into the parameters' own dtypes; the frozen base weights in a full
        checkpoint are accepted and skipped.

        Keys are first brought to the loaded model's names for the SigLIP tower (see `_tower_names`).
        """
        if set(state) == {"model_state_dict"}:  # training checkpoints wrap the weights
            state = state["model_state_dict"]
        own = self.state_dict()
        state = _tower_names(state, nested=any(NESTED_TOWER in k for k in own))
        required = {k for k in own if k.startswith("projection_layer.") or any(m in k for m in TRAINED_MARKERS)}
        missing = sorted(required - state.keys())
        unexpected = sorted(k for k in state.keys() - own.keys() if not _is_quantisation_state(k, own))
        wrong = sorted(k for k in required & state.keys() if state[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            raise BridgeError(
                "The ANTONI-Alpha weights do not fit this model "
                f"(missing: {describe_keys(missing)}; unexpected: {describe_keys(unexpected)}; "
                f"wrong shape: {describe_keys(wrong)}).",
                "use weights made for this language model (MedGemma-4B-IT for the published ones)",
            )
        self.load_state_dict({k: state[k] for k in required}, strict=False)
        self.prefixes.clear()

    def forget_prefix(self, key: str) -> None:
        """Drop the KV cache kept for the latents `key` (their slide was forgotten or replaced)."""
        self.prefixes.entries.pop(key, None)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds, under the published key names: projector, LoRA matrices, trained copies."""
        return {
            key: value.detach().contiguous()
            for key, value in self.state_dict().items()
            if key.startswith("projection_layer.") or any(marker in key for marker in TRAINED_MARKERS)
        }

    def save(self, folder: Path) -> None:
        """A weights folder in the published layout (`config.json` + `model.safetensors`)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.trained_state(), str(folder / "model.safetensors"))
        self.config.write(folder)

    def _to_bf16(self) -> None:
        """The published code runs the projector, LoRA and the trained copies in bf16 on the GPU; so do we,
        for the same answers (quantised 4-bit weights keep their own storage)."""
        for parameter in self.parameters():
            if parameter.dtype == torch.float32:
                parameter.data = parameter.data.to(torch.bfloat16)

    @property
    def device(self) -> torch.device:
        return self.projection_layer.query_tokens.device

    # ------------------------------------------------------------------ slide mode

    def check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return check_latents(latents, self.config)

    def image_embeddings(self, latents: torch.Tensor) -> torch.Tensor:
        return self._projected(self.check_latents(latents)[None])

    def input_embeddings(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings (scaled by sqrt(width) as Gemma does) with the image positions replaced."""
        embeds = self.llm.get_input_embeddings()(input_ids.to(self.device))
        mask = input_ids.to(self.device) == self.ids.image
        per_row = mask.sum(dim=1)
        if not bool((per_row == image_embeds.shape[1]).all()):
            raise BridgeError(
                "The prompt's image block does not match the projector's output.",
                "the tokenizer must be MedGemma's (or the demo's) with its image token",
            )
        image = image_embeds.expand(input_ids.shape[0], -1, -1).reshape(-1, embeds.shape[-1])
        return embeds.masked_scatter(mask[..., None], image.to(embeds.dtype))

    def forward(self, latents: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Logits of (B, T) prompts about one slide (used by scoring; training takes `train.loss`)."""
        embeds = self.input_embeddings(input_ids, self.image_embeddings(latents))
        mask = attention_mask if attention_mask is not None else input_ids != self.ids.pad
        text = torch.zeros_like(input_ids, device=self.device)  # causal over the image block too, as in train.loss
        return self.llm(inputs_embeds=embeds, attention_mask=mask.to(self.device).long(), token_type_ids=text).logits

    @property
    def context_length(self) -> int:
        return int(self.llm.config.get_text_config().max_position_embeddings)

    def prompt_ids(self, conversation: prompt.Conversation, add_generation_prompt: bool = True) -> torch.Tensor:
        ids = prompt.encode(
            self.tokenizer, conversation, self.config.projector_num_output_tokens, add_generation_prompt
        )
        limit = self.context_length
        if len(ids) >= limit:
            raise BridgeError(
                f"The conversation is {len(ids):,} tokens long; the model reads at most {limit:,}.",
                "start a new conversation or shorten it",
            )
        return ids

    @torch.inference_mode()
    def answer(
        self,
        latents: torch.Tensor,
        conversation: prompt.Conversation,
        options: GenerationOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        prefix_key: str | None = None,
    ) -> Generated:
        """The model's next turn. With `prefix_key` (the latents' identity), a follow-up reuses the KV cache."""
        prompt.check_asks(conversation)
        ids = self.prompt_ids(conversation).tolist()
        options = self._fit(options or GenerationOptions(), len(ids))
        image = _digest(self.check_latents(latents))
        entry = self.prefixes.take(prefix_key, ids, image) if prefix_key else None
        reused = len(entry.ids) if entry else 0
        if entry is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.llm.config.get_text_config())
            entry = CachedPrefix(prefix_key or "", [], cache, image)

        def prefill() -> torch.Tensor:
            new = torch.tensor([ids[reused:]])
            if reused == 0:
                embeds = self.input_embeddings(new, self.image_embeddings(latents))
            else:
                embeds = self.llm.get_input_embeddings()(new.to(self.device))
            out = self.llm(inputs_embeds=embeds, **kv_cache(entry.cache), logits_to_keep=1)
            entry.ids.extend(ids[reused:])
            if prefix_key and entry.snapshot is None:
                entry.keep_snapshot()
            return out.logits[0, -1]

        def step(token: torch.Tensor) -> torch.Tensor:
            out = self.llm(input_ids=token.to(self.device), **kv_cache(entry.cache))
            return out.logits[0, -1]

        result = timed_decode(
            prefill, step, self.tokenizer, self.ids.stops, options, entry.ids, len(ids), reused, on_text, cancelled
        )
        if prefix_key:
            self.prefixes.put(entry)
        return result

    @torch.inference_mode()
    def score_choices(self, latents: torch.Tensor, question: str, choices: list[str]) -> ChoiceScores:
        """Mean log-likelihood ranking of answers, as published, all choices in one batched forward pass."""
        if not choices or any(not c.strip() for c in choices):
            raise BridgeError("Multiple choice needs at least one non-empty choice.", 'e.g. --choices "A=...,B=..."')
        turns = [[{"role": "user", "content": question}, {"role": "assistant", "content": c}] for c in choices]
        rows = [self.prompt_ids(t, add_generation_prompt=False) for t in turns]  # as published
        answer_start = len(self.prompt_ids([{"role": "user", "content": question}]))
        spans = [self._choice_span(row, choice, answer_start) for row, choice in zip(rows, choices, strict=True)]
        ids = self._padded(rows)
        first, last = min(start for start, _ in spans), max(stop for _, stop in spans)
        token_lp = self._token_log_probs(self.input_embeddings(ids, self.image_embeddings(latents)), ids, first, last)
        scores = [float(-token_lp[i, start - first : stop - first].mean()) for i, (start, stop) in enumerate(spans)]
        return ChoiceScores(list(choices), scores)

    @torch.inference_mode()
    def score_answer(
        self, latents: torch.Tensor | None, conversation: prompt.Conversation, answer: str
    ) -> torch.Tensor:
        """Log-likelihoods (B, answer tokens) of `answer` as the reply to `conversation`, teacher-forced, for a
        batch of latents (B, 513, D) in one forward pass; `latents` None scores the prompt with no image block
        at all (the language model's prior). The answer's tokens are fixed by tokenising its text in the turn;
        its end-of-turn token is not counted."""
        prompt.check_asks(conversation)
        image = latents is not None
        full = [*conversation, {"role": "assistant", "content": answer}]
        row = self._rendered_ids(full, image, add_generation_prompt=False)
        start = len(self._rendered_ids(conversation, image, add_generation_prompt=True))
        values = row.tolist()
        stop = len(values) - 1 - values[::-1].index(self.ids.end_of_turn)
        if stop <= start:
            raise BridgeError("The answer to explain is empty.", "give the answer's text")
        if latents is not None:
            batch = self._projected(latents if latents.ndim == 3 else latents[None])
            ids = row[None].expand(batch.shape[0], -1)
            embeds = self.input_embeddings(ids, batch)
        else:
            ids = row[None]
            embeds = self.llm.get_input_embeddings()(ids.to(self.device))
        return self._token_log_probs(embeds, ids, start, stop)

    def _rendered_ids(
        self, conversation: prompt.Conversation, image: bool, add_generation_prompt: bool
    ) -> torch.Tensor:
        if image:
            return self.prompt_ids(conversation, add_generation_prompt)
        return prompt.encode(self.tokenizer, conversation, 0, add_generation_prompt, image=False)

    def _projected(self, latents: torch.Tensor) -> torch.Tensor:
        """Image-token embeddings (B, tokens, width) of a batch of latents (B, 513, D)."""
        if latents.ndim != 3 or latents.shape[0] == 0:
            raise BridgeError(
                f"A batch of slide latents must be (B, 513, D), not {tuple(latents.shape)}.",
                "stack the latents of each slide (or mask) along a first axis",
            )
        self.check_latents(latents[0])  # shape and type; the values are checked on the projection
        embeds = self.projection_layer(latents.to(self.device, self.projection_layer.query_tokens.dtype))
        if not bool(torch.isfinite(embeds).all()):
            raise BridgeError("The slide latents overflow the projector (values far out of range).", "embed again")
        return embeds.to(self._embedding_dtype())

    def _padded(self, rows: list[torch.Tensor]) -> torch.Tensor:
        ids = torch.full((len(rows), max(len(r) for r in rows)), self.ids.pad, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids

    def _token_log_probs(self, embeds: torch.Tensor, ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """log p(ids[:, t] | everything before t) for t in [start, stop), shape (B, stop - start), teacher-forced.
        Logits are kept only where those tokens are predicted: a full (batch, length, vocabulary) tensor is
        gigabytes with MedGemma's 262k vocabulary."""
        window = torch.arange(start - 1, stop - 1, device=self.device)
        mask = (ids != self.ids.pad).to(self.device).long()
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=window).logits.float()
        targets = ids[:, start:stop].to(logits.device)
        chosen = logits.gather(-1, targets[..., None])[..., 0]
        return chosen - torch.logsumexp(logits, dim=-1)

    def _fit(self, options: GenerationOptions, prompt_tokens: int) -> GenerationOptions:
        """No answer runs past the model's context."""
        room = self.context_length - prompt_tokens
        return options if options.max_new_tokens <= room else dataclasses.replace(options, max_new_tokens=room)

    def _choice_span(self, row: torch.Tensor, choice: str, answer_start: int) -> tuple[int, int]:
        """Positions of the choice's tokens: their last occurrence, as published; else the whole answer turn
        (a choice can tokenize differently inside the turn than alone)."""
        tokens = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
        values = row.tolist()
        end = len(values) - 1 - values[::-1].index(self.ids.end_of_turn)  # the answer turn's end
        for start in range(end - len(tokens), answer_start - 1, -1):
            if values[start : start + len(tokens)] == tokens:
                return start, start + len(tokens)
        return answer_start, end

    # ------------------------------------------------------------------ view mode

    @torch.inference_mode()
    def view(
        self,
        image: np.ndarray,
        conversation: prompt.Conversation,
        options: GenerationOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Generated:
        """MedGemma's own answer about an RGB image (H, W, 3 uint8), adapter off, same loaded weights."""
        prompt.check_asks(conversation)
        pixels = self._pixel_values(image)
        tokens = self.llm.config.mm_tokens_per_image
        text = prompt.render(self.tokenizer, conversation, tokens, add_generation_prompt=True)
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])
        options = self._fit(options or GenerationOptions(), ids.shape[1])
        from transformers import DynamicCache

        cache = DynamicCache(config=self.llm.config.get_text_config())
        fed: list[int] = list(ids[0])

        def prefill() -> torch.Tensor:
            token_types = (ids == self.ids.image).long()
            out = self.llm(
                input_ids=ids.to(self.device),
                pixel_values=pixels,
                token_type_ids=token_types.to(self.device),
                **kv_cache(cache),
                logits_to_keep=1,
            )
            return out.logits[0, -1]

        def step(token: torch.Tensor) -> torch.Tensor:
            return self.llm(input_ids=token.to(self.device), **kv_cache(cache)).logits[0, -1]

        with self.llm.disable_adapter(), self._view_weights_on_device():
            return timed_decode(
                prefill, step, self.tokenizer, self.ids.stops, options, fed, ids.shape[1], 0, on_text, cancelled
            )

    def _pixel_values(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BridgeError(
                "The field of view must be an RGB image (height, width, 3) of bytes.", "send an 8-bit RGB image"
            )
        size = self.loaded.image_size
        from PIL import Image

        resample = Image.Resampling(self.loaded.image_resample)
        resized = np.asarray(Image.fromarray(image).resize((size, size), resample), dtype=np.float32)
        mean, std = np.array(self.loaded.image_mean), np.array(self.loaded.image_std)
        normalised = (resized / 255.0 - mean) / std
        tensor = torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None]
        return tensor.to(self.device, self._embedding_dtype())

    # ------------------------------------------------------------------ memory

    def _embedding_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def park_view_weights(self, place: torch.device | str = "cpu") -> None:
        """Keep MedGemma's original (tied) embedding and head off the GPU: slide mode reads only the trained
        copies, and the original, 1.34 GB at MedGemma's vocabulary, is needed only in view mode, which brings it
        over for the call (about 50 ms on PCIe 4). Nothing moves when the model is on the CPU."""
        if self.device.type != "cpu":
            self._move_view_weights(torch.device(place))

    @contextlib.contextmanager
    def _view_weights_on_device(self) -> Iterator[None]:
        parked = self._original_modules()[0].weight.device if self._original_modules() else self.device
        if parked == self.device:
            yield
            return
        self._move_view_weights(self.device)
        try:
            yield
        finally:
            self._move_view_weights(parked)

    def _move_view_weights(self, place: torch.device) -> None:
        """Move the original modules' weights, keeping tied ones one Parameter (`Module.to` would untie them when
        the storage type changes, and then hold two copies)."""
        moved: list[tuple[nn.Parameter, nn.Parameter]] = []
        for owner in (m for original in self._original_modules() for m in original.modules()):
            for name, parameter in list(owner.named_parameters(recurse=False)):
                new = next((n for old, n in moved if old is parameter), None)
                if new is None:
                    new = nn.Parameter(parameter.detach().to(place), requires_grad=parameter.requires_grad)
                    moved.append((parameter, new))
                setattr(owner, name, new)

    def _original_modules(self) -> list[nn.Module]:
        from peft.utils.other import ModulesToSaveWrapper

        return [m.original_module for m in self.llm.modules() if isinstance(m, ModulesToSaveWrapper)]


def check_latents(latents: torch.Tensor, config: AntoniConfig) -> torch.Tensor:
    """(513, dim) or (1, 513, dim) finite float latents of the width the projector takes (checkable before
    the model loads: the width is in the weights' config)."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise BridgeError("Slide latents must be a floating-point tensor.", "embed the slide with antoni-bridge")
    if latents.ndim == 3 and latents.shape[0] == 1:
        latents = latents[0]
    if latents.ndim != 2 or tuple(latents.shape) != (LATENT_ROWS, config.projector_input_dim):
        raise BridgeError(
            f"Slide latents have shape {tuple(latents.shape)}; this model takes "
            f"({LATENT_ROWS}, {config.projector_input_dim}) (a Prism slide embedding and 512 latents).",
            "embed the slide with the encoders these weights were trained with (Virchow + Prism; demo with --demo)",
        )
    latents = latents.float()
    if not torch.isfinite(latents).all():
        raise BridgeError("The slide latents contain NaN or infinite values.", "embed the slide again")
    return latents


def _tower_names(state: dict[str, torch.Tensor], nested: bool) -> dict[str, torch.Tensor]:
    """The release was saved with transformers 4.56, whose SigLIP tower sits one level deeper
    (`vision_tower.vision_model.`), as in transformers up to 5.x's flattening; our own checkpoints use whichever
    names the transformers that trained them had. Bring every key to the loaded model's naming."""
    flat = {k.replace(NESTED_TOWER, ".vision_tower."): v for k, v in state.items()}
    return {k.replace(".vision_tower.", NESTED_TOWER): v for k, v in flat.items()} if nested else flat


def _digest(latents: torch.Tensor) -> str:
    return hashlib.sha256(latents.detach().cpu().numpy().tobytes()).hexdigest()[:16]


def _relative_or_id(weights: Path, llm_id: str) -> str:
    """The config's LLM id; a relative folder next to the weights (as the demo writes) is used as such."""
    local = weights / llm_id
    return str(local) if not os.path.isabs(llm_id) and local.is_dir() else llm_id


QUANT_STATE = re.compile(
    r"^(?P<weight>.+\.weight)\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\.bitsandbytes__(nf4|fp4))$"
)


def _is_quantisation_state(key: str, own: dict[str, torch.Tensor]) -> bool:
    """bitsandbytes' state stored next to a 4-bit base weight of ours (a full 4-bit checkpoint has it)."""
    match = QUANT_STATE.match(key)
    return match is not None and match.group("weight") in own
