"""How the engine runs its models (not which ones: that is the `ModelChoice`)."""

from __future__ import annotations

from dataclasses import dataclass

from antoni_bridge.errors import BridgeError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class EngineSettings:
    """`serve --precision/--batch-size/--threads`: arithmetic, tile batch size and reading threads."""

    precision: str = "auto"  # auto: bf16 encoders on CUDA, the language model as its quantisation says
    batch_size: int | None = None  # tiles per tile-encoder batch; None: the pipeline's default
    threads: int | None = None  # tile decoding threads, and torch's CPU threads; None: the defaults

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise BridgeError(f"Unknown precision {self.precision!r}.", f"use one of {', '.join(PRECISIONS)}")
        if (self.batch_size is not None and self.batch_size < 1) or (self.threads is not None and self.threads < 1):
            raise BridgeError("--batch-size and --threads must be at least 1.", "leave them out for the defaults")

    def encoder_precision(self) -> str:
        """The encoders' autocast precision on a GPU (they run fp32 on the CPU whatever is asked)."""
        return "bf16" if self.precision == "auto" else self.precision

    def model_quant(self, quant: str) -> str:
        """The language model's quantisation: an explicit --quant wins; with auto, fp32 means unquantised
        fp32 and bf16 means bf16 weights (fp16 has no MedGemma path: auto decides)."""
        if quant != "auto":
            return quant
        return {"fp32": "none", "bf16": "bf16"}.get(self.precision, "auto")

    def embed_settings(self):  # -> encoders.pipeline.EmbedSettings (torch is imported only when needed)
        from antoni_bridge.encoders.pipeline import EmbedSettings

        default = EmbedSettings()
        return EmbedSettings(batch_size=self.batch_size or default.batch_size, threads=self.threads)
