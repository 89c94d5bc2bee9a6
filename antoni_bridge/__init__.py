"""antoni-bridge: a local pathology copilot around the ANTONI-Alpha whole-slide vision-language model."""

__version__ = "0.1.0"
