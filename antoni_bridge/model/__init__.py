"""ANTONI-Alpha: a projector from Prism latents into MedGemma (Gemma 3), with LoRA."""
