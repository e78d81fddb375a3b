"""Checkpoint side: params.json, consolidated.safetensors, the checkpoint generator, the numpy reference."""
