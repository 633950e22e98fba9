"""Several GPUs for one video: Ulysses sequence parallelism with Ray actors and torch.distributed.

``ParallelTransformer`` (driver side) hands each forward to a ``WorkerGroup`` of Ray actors, one per GPU; each
actor is a rank holding the whole model and a run of the image tokens (``sequence.SequenceParallel``), exchanging
them for attention heads around attention (``layout``).

The all-to-all is ``torch.distributed.all_to_all_single``, called directly. yunchang (the USP attention xDiT's
xfuser builds on) wraps the same call, but for equal splits only (sequence and heads divisible by the GPU count),
picks its attention among its own kernels (flash-attn, SageAttention, torch) and imports flash-attn at import time;
xfuser adds its own global process-group set-up and a diffusers pipeline around it. Neither knows our joint
image+text sequence with its key padding mask or runs our FP8 attention; what we need of them is one collective
with split sizes, which torch.distributed has, so neither is a dependency. Ray (optional) starts and places the
processes; ``ray_support.require_ray`` says how to install it.
"""

from .group import WorkerError, WorkerGroup
from .ray_support import RayMissingError, require_ray
from .sequence import SequenceParallel, check_world_size
from .transformer import ParallelTransformer

__all__ = ["ParallelTransformer", "WorkerGroup", "WorkerError", "SequenceParallel", "check_world_size",
           "RayMissingError", "require_ray"]
