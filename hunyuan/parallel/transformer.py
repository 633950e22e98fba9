"""``ParallelTransformer``: a ``HunyuanVideoTransformer`` with no weights whose forward runs on a ``WorkerGroup``.

It is a ``HunyuanVideoTransformer`` so that everything driving ours drives it (our sampler, the ComfyUI adapter's
DIFFUSION_MODEL wrappers through ``forward_wrapper``, the hybrid schedule): the forward's inputs go to every rank
and rank 0's output comes back on the caller's device. What the hybrid schedule changes on a model is carried to
the ranks with each call: the policy (``set_policy`` or an attention override assigned to ``policy``) and
``fp8.apply.compute_override``, which this stand-in records on one small ``FP8Linear`` (``precision_probe``, whose
own mode is FP8 outside an override). Of ``transformer_options`` the ranks get the sampler's sigmas (which the
step-distilled 1.5 model reads); block replacements and attention patches cannot run on the ranks: they are
reported once and not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...fp8.formats import ComputeMode, high_precision_dtype
from ...fp8.linear import FP8Linear
from ..model import HunyuanVideoTransformer
from .group import WorkerGroup
from .sequence import check_world_size
from .worker import model_state

logger = logging.getLogger("hyvideo_fp8")

_PROBE_MODE = ComputeMode.FP8
# The transformer_options entries the model itself reads (the step-distilled 1.5 model's time_r target); the rest
# belongs to the host (wrappers and patches run here, around the call).
_SHIPPED_OPTIONS = ("sigmas", "sample_sigmas")


class ParallelTransformer(HunyuanVideoTransformer):
    """The model ``source`` run sequence-parallel on ``world_size`` ranks (``group.WorkerGroup``'s arguments).

    ``interrupt_check`` is called while the ranks compute and may raise to stop waiting (ComfyUI's interrupt).
    ``source`` is kept: the ranks are built from it, again after a failure. Call ``start()`` to load the ranks
    now instead of at the first forward, ``shutdown()`` to free them.
    """

    def __init__(self, source: HunyuanVideoTransformer, world_size: int, *, device: str = "cuda",
                 address: str | None = None, interrupt_check: Callable[[], None] | None = None,
                 timeout_s: float = 600.0, grace_s: float = 30.0) -> None:
        nn.Module.__init__(self)  # none of the parent's layers: the weights live on the ranks
        if isinstance(source, ParallelTransformer):
            raise ValueError("this model already runs on several GPUs: connect the loader's MODEL instead")
        check_world_size(world_size, source.config.num_heads)
        self.config, self.policy = source.config, source.policy
        self._plain_dtype = source.dtype
        self.forward_wrapper = None
        self.fused_producers, self.token_chunk = source.fused_producers, source.token_chunk
        self.block_swap, self.kernel_plans, self.sequence_parallel = None, {}, None
        self._warned_options: set[str] = set()
        self._compile_pending = False
        self.precision_probe = FP8Linear(16, 16, bias=False, mode=_PROBE_MODE, device="cpu")
        self.interrupt_check = interrupt_check
        self.workers = WorkerGroup(world_size, lambda: model_state(source), device=device, address=address,
                                   timeout_s=timeout_s, grace_s=grace_s)

    @property
    def dtype(self) -> torch.dtype:
        return high_precision_dtype(self.policy.compute_dtype) if self.policy is not None else self._plain_dtype

    def set_policy(self, policy) -> None:
        """Takes effect on the ranks at the next call."""
        self.policy = policy

    def compile_blocks(self, mode: str | None = None, backend: str = "inductor") -> None:
        raise RuntimeError("the multi-GPU model does not compile its blocks: its ranks run them eagerly")

    def start(self) -> None:
        self.workers.start()

    def shutdown(self) -> None:
        self.workers.shutdown()

    def _forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor | None, guidance: Tensor | None,
                 attention_mask: Tensor | None, transformer_options: dict, **kwargs) -> Tensor:
        # The inputs are checked on the ranks (every rank raises the same error, which comes back as it is).
        patches = [key for key in ("patches_replace", "patches") if transformer_options.get(key)]
        if transformer_options.get("optimized_attention_override") is not None:
            patches.append("optimized_attention_override")
        if patches and "patches" not in self._warned_options:
            self._warned_options.add("patches")
            logger.warning("[hyvideo_fp8] transformer_options %s are not run by the multi-GPU model: its blocks run "
                           "on the GPU workers; use the single-GPU MODEL for the node that set them", patches)
        inputs: dict[str, Any] = dict(x=x, timestep=timestep, context=context, y=y, guidance=guidance,
                                      attention_mask=attention_mask, **kwargs)
        inputs = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in inputs.items()}
        options = {k: v.detach().cpu() for k, v in transformer_options.items() if k in _SHIPPED_OPTIONS}
        mode = self.precision_probe.mode
        call = {"inputs": inputs, "options": options, "policy": self.policy,
                "compute_override": None if mode == _PROBE_MODE else mode}
        return self.workers.run(call, self.interrupt_check).to(x.device)


__all__ = ["ParallelTransformer"]
