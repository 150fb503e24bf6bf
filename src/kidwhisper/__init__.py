"""kidwhisper: fine-tune OpenAI Whisper on children's speech, from a YAML config to a WER."""

__version__ = "0.1.0"
