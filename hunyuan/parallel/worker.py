"""One rank of a multi-GPU group, run as a Ray actor (``hunyuan.parallel.group`` wraps it): its device, its
membership of the torch.distributed process group and its copy of the model."""

from __future__ import annotations

import dataclasses
import socket
import warnings
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ...fp8.apply import compute_override
from ...fp8.kernel_plan import Kernel
from ..loader import load_transformer
from ..model import HunyuanVideoTransformer
from ..plan import kernel_plan
from .sequence import SequenceParallel


def raw_bytes(t: Tensor) -> tuple[torch.dtype, tuple[int, ...], np.ndarray]:
    """A tensor as its dtype, shape and bytes. Ray's object store holds numpy arrays once per machine and hands
    them to the ranks there without a copy; and torch cannot unpickle FP8 tensors."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return t.dtype, tuple(t.shape), flat.view(torch.uint8).numpy()


def from_raw_bytes(dtype: torch.dtype, shape: tuple[int, ...], data: np.ndarray) -> Tensor:
    with warnings.catch_warnings():  # the store's arrays are read-only; the tensor is copied right away
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(data).view(dtype).reshape(shape).clone()


def model_state(model: HunyuanVideoTransformer) -> dict[str, Any]:
    """What a rank needs to rebuild ``model``: config, policy, plain dtype and the weights (FP8 weights stay FP8
    with their scales), as ``raw_bytes``."""
    return {"config": model.config, "policy": model.policy, "dtype": model.dtype,
            "state_dict": {k: raw_bytes(v) for k, v in model.state_dict().items()}}


class _Weights(dict):
    """The state dict of ``model_state``, each tensor made when the loader takes it (one at a time)."""

    def __init__(self, packed: dict[str, tuple]) -> None:
        super().__init__(packed)
        self.shapes = {k: v[1] for k, v in packed.items()}

    def __getitem__(self, key: str) -> Tensor:
        return from_raw_bytes(*super().__getitem__(key))

    def pop(self, key: str, *default) -> Tensor:
        return from_raw_bytes(*super().pop(key, *default))


def build_model(state: dict[str, Any], device: torch.device) -> HunyuanVideoTransformer:
    """The model of ``model_state`` on ``device``, through the loader (weights checked as they stream in). Its
    kernel plan has no quantizing prologue: the exchange around attention carries 16-bit queries."""
    policy = state["policy"]
    model = load_transformer(_Weights(state["state_dict"]), policy, device, dtype=None if policy else state["dtype"],
                             config=state["config"], consume=True)
    plan_without_quantizing_prologue(model, device)
    return model


def plan_without_quantizing_prologue(model: HunyuanVideoTransformer, device: torch.device) -> None:
    """Make the model's kernel plan for its compute dtype, then take the quantizing prologue out of its plans."""
    kernel_plan(model, device, model.dtype)
    model.kernel_plans = {key: dataclasses.replace(plan, quant_prologue=Kernel.NONE)
                          for key, plan in model.kernel_plans.items()}


class Worker:
    """One rank, hosted by a Ray actor (``bootstrap.PackActor``): ``address`` on rank 0, then ``setup`` on every
    rank, then ``forward`` on every rank for each model call."""

    def __init__(self) -> None:
        self.rank = -1
        self.device = torch.device("cpu")
        self.model: HunyuanVideoTransformer | None = None
        self.parallel: SequenceParallel | None = None

    def address(self) -> tuple[str, int]:
        """This node's address and a free TCP port on it, where rank 0 meets the others."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, rank: int, world_size: int, master: tuple[str, int], backend: str, state: dict[str, Any],
              timeout_s: float) -> str:
        """Join the process group and build the model; returns where this rank runs."""
        self.rank = rank
        if backend == "nccl":
            torch.cuda.set_device(0)  # Ray shows each actor only its own GPU
            self.device = torch.device("cuda", 0)
        dist.init_process_group(backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
        self.model = build_model(state, self.device)
        self.parallel = SequenceParallel(self.model.config.num_heads)
        self.model.sequence_parallel = self.parallel
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"rank {rank} on {socket.gethostname()} ({where})"

    @torch.no_grad()
    def forward(self, call: dict[str, Any]) -> Tensor | None:
        """One model call: ``call`` holds the forward's tensors and the transformer options the model reads (CPU),
        the policy to run under and the hybrid schedule's compute override (or None). Rank 0 returns the output on
        the CPU, the others None."""
        model = self.model
        if call["policy"] != model.policy:
            model.set_policy(call["policy"])
            plan_without_quantizing_prologue(model, self.device)  # another compute dtype has another plan
        inputs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in call["inputs"].items()}
        override = call["compute_override"]
        with compute_override(model, override) if override is not None else nullcontext(), self.parallel.active():
            out = model(**inputs, transformer_options={k: v.to(self.device) for k, v in call["options"].items()})
        return out.cpu() if self.rank == 0 else None


__all__ = ["Worker", "model_state", "build_model", "plan_without_quantizing_prologue", "raw_bytes", "from_raw_bytes"]
