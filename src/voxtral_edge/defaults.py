"""What a request gets when it names nothing else: one home for each default and bound, imported wherever
it is used (runtime, CLI, service, rendering, benchmarks, the numpy reference).

The Euler steps have no default here: a bundle's manifest carries the model's own (7 for the released
checkpoint), and `steps=None` means that one.
"""

CFG_ALPHA = 1.2  # classifier-free guidance, as vLLM-Omni's voxtral_tts (pinned by the golden outputs)
MAX_CFG = 10.0
MAX_STEPS = 64
MAX_FRAMES = 2048  # the reference server's max_tokens: 164 s of audio
CHUNK_FRAMES = 4  # frames per streamed chunk after the first (one codec call each)
FIRST_CHUNK_FRAMES = 1  # the first chunk is one frame, so that sound starts early
MAX_CONTEXT = 4096  # positions of an exported bundle's rotary table and KV cache: the reference server's max_model_len
