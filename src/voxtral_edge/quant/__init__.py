"""Quantization of exported graphs (int8 / int4)."""
