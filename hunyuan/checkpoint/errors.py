"""Exceptions of checkpoint reading, conversion and writing.

All derive from ``ValueError`` (like ``NotHunyuanVideoError``) so callers that only want "bad input" catch one type;
the subclasses let tests and the node layer tell the cases apart.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file cannot be read as a HunyuanVideo transformer."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or its header is malformed."""


class UnsafePickleError(CheckpointError):
    """A ``.pt`` file needs arbitrary Python code to unpickle; we refuse to run it."""


class MissingFP8MapError(CheckpointError):
    """An FP8 file stores pre-scaled weights but the per-layer scale map is not available."""


class UnsupportedQuantizationError(CheckpointError):
    """A quantized layer uses a format this pack cannot dequantize (e.g. nvfp4, int8)."""


class InvalidValuesError(CheckpointError):
    """A tensor holds NaN/Inf (or FP8 NaN codes), or an FP8 scale is not a positive finite number."""


class OutputExistsError(FileExistsError):
    """The converter's destination exists (or is the source) and overwriting was not allowed."""


class OutputBusyError(OSError):
    """Another running conversion is writing the same destination."""


__all__ = ["CheckpointError", "CorruptCheckpointError", "UnsafePickleError", "MissingFP8MapError",
           "UnsupportedQuantizationError", "InvalidValuesError", "OutputExistsError", "OutputBusyError"]
