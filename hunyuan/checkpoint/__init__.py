"""HunyuanVideo checkpoints: read every layout/format/FP8 flavour into canonical names, write our FP8 format.

Public entry points: :func:`load_canonical_state_dict` (any file -> canonical tensors + :class:`CheckpointInfo`),
:func:`open_canonical` (the same, lazily), :func:`convert_checkpoint` (streaming FP8 converter),
:func:`inspect_checkpoint` and :func:`save_canonical` (atomic write of an in-memory canonical state dict).
"""

from .canonical import CanonicalCheckpoint, CheckpointInfo, load_canonical_state_dict, open_canonical
from .convert import ConversionReport, convert_checkpoint
from .errors import (
    CheckpointError,
    CorruptCheckpointError,
    InvalidValuesError,
    MissingFP8MapError,
    OutputBusyError,
    OutputExistsError,
    UnsafePickleError,
    UnsupportedQuantizationError,
)
from .inspect import inspect_checkpoint, inspect_checkpoint_dict
from .values import check_values
from .writer import save_canonical

__all__ = ["load_canonical_state_dict", "open_canonical", "CanonicalCheckpoint", "CheckpointInfo",
           "convert_checkpoint", "ConversionReport", "inspect_checkpoint", "inspect_checkpoint_dict", "save_canonical",
           "CheckpointError", "CorruptCheckpointError", "InvalidValuesError", "MissingFP8MapError", "OutputBusyError",
           "OutputExistsError", "UnsafePickleError", "UnsupportedQuantizationError", "check_values"]
