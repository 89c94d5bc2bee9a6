"""Training (stage 1 projector alignment, stage 2 LoRA instruction tuning) and evaluation."""
