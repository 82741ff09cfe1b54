"""Converters from PyTorch / safetensors state dicts (OpenAI CLIP, open_clip, Karlo) to our stage checkpoints."""
