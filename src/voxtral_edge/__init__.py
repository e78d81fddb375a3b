"""voxtral-edge: an offline CPU runtime for Voxtral TTS.

The runtime (this package) needs numpy, onnxruntime and tokenizers only; the exporter lives in
`voxtral_edge.export` and the quantizer in `voxtral_edge.quant`, and the runtime imports neither.
"""

__version__ = "0.1.0"
