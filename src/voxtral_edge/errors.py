"""Errors a user can act on. The CLI prints them as one line; anything else is a bug."""


class VoxtralEdgeError(Exception):
    """Base class: the message names the file, tensor or argument, what was expected and what was found."""


class ConfigError(VoxtralEdgeError):
    """params.json (or another config file) is missing a key or is inconsistent."""


class CheckpointError(VoxtralEdgeError):
    """consolidated.safetensors is damaged or does not match params.json."""


class VoiceFileError(VoxtralEdgeError):
    """A voice_embedding/*.pt file is damaged or carries something other than one tensor."""


class TokenizerError(VoxtralEdgeError):
    """tekken.json (or a tokenizer built from it) is damaged or lacks what a speech prompt needs."""


class BundleError(VoxtralEdgeError):
    """A bundle directory is missing, damaged, or was made by an incompatible version."""


class UsageError(VoxtralEdgeError):
    """A bad argument or input (text, voice, number out of range, output path): the CLI exits with 2."""


class BundlePathError(BundleError, UsageError):
    """The bundle path given is not a bundle at all."""


class UnknownNameError(ConfigError, UsageError):
    """A plan, profile or voice name that does not exist."""


class KernelError(VoxtralEdgeError):
    """onnxruntime computes a quantized kernel wrongly on this CPU, and no fallback it offers helps."""
