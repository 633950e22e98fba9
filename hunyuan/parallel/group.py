"""A group of Ray actors, one per GPU, each a rank of one torch.distributed process group running the model.

Ray starts and places the processes (on this machine, or on a Ray cluster of several with ``address="auto"``);
torch.distributed (NCCL on GPUs, gloo on CPUs) carries the collectives. The weights go into Ray's object store
once and every rank builds its copy from there: the checkpoint is read from disk once, by the loader.

Failures: an error every rank raises alike (a bad input) comes back as that error and the group stays up. An error
on some ranks only, or a rank that died, leaves the others waiting inside a collective: the group is shut down and
a clear error raised; the next call starts a new group. An interrupt stops waiting at once; the ranks finish the
call under way in the background (Ray runs an actor's calls in order), so the next call finds them consistent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from . import bootstrap
from .ray_support import require_ray

logger = logging.getLogger("hyvideo_fp8")

POLL_S = 0.1  # how often an interrupt is looked for while the ranks compute


class WorkerError(RuntimeError):
    """A rank failed or died; the group was shut down and the next call starts a new one."""


class WorkerGroup:
    """``world_size`` ranks of the model that ``state()`` (``worker.model_state``) describes.

    Args:
        device: "cuda" (one GPU per rank, NCCL) or "cpu" (gloo; tests and machines without GPUs).
        address: the Ray cluster to join ("auto": the one this machine belongs to); None starts Ray on this
            machine unless this process has already started or joined one.
        timeout_s: how long a rank waits inside a collective for a rank that never arrives, and how long the ranks
            may take to start and load the model.
        grace_s: after one rank fails, how long the others get to return before the group is shut down.
    """

    def __init__(self, world_size: int, state: Callable[[], dict[str, Any]], *, device: str = "cuda",
                 address: str | None = None, timeout_s: float = 600.0, grace_s: float = 30.0) -> None:
        if device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
        self.world_size, self.state, self.device, self.address = world_size, state, device, address
        self.timeout_s, self.grace_s = timeout_s, grace_s
        self.actors: list | None = None
        self.placement: list[str] = []

    @property
    def running(self) -> bool:
        return self.actors is not None

    def start(self) -> None:
        """Start the ranks and load the model on each (no-op when running)."""
        if self.actors is not None:
            return
        ray = require_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
        gpus = 1 if self.device == "cuda" else 0
        if gpus:
            available = ray.cluster_resources().get("GPU", 0)
            if available < self.world_size:
                raise WorkerError(f"{self.world_size} GPUs asked for, but the Ray cluster has {available:g}: "
                                  "lower the GPU count, or start Ray on more machines and join it with address "
                                  "'auto'")
        ray.cloudpickle.register_pickle_by_value(bootstrap)
        actor_class = ray.remote(num_gpus=gpus, num_cpus=1 if gpus else 0, max_restarts=0)(bootstrap.PackActor)
        package = __name__.split(".")[0]
        root = str(Path(sys.modules[package].__path__[0]).resolve())
        actors = [actor_class.remote(package, root) for _ in range(self.world_size)]
        try:
            master = ray.get(actors[0].call.remote("address"), timeout=self.timeout_s)
            state = ray.put(self.state())
            backend = "nccl" if gpus else "gloo"
            self.placement = ray.get([a.call.remote("setup", rank, self.world_size, master, backend, state,
                                                    self.timeout_s) for rank, a in enumerate(actors)],
                                     timeout=self.timeout_s)
            del state
        except BaseException as err:
            _kill(ray, actors)
            wrapped = _as_worker_error(ray, err, "starting the GPU workers")
            if wrapped is err:
                raise
            raise wrapped from err
        self.actors = actors
        logger.info("[hyvideo_fp8] multi-GPU model on %d ranks: %s", self.world_size, "; ".join(self.placement))

    def shutdown(self) -> None:
        """Stop every rank (their GPU memory is freed); the next call starts them again."""
        if self.actors is not None:
            _kill(require_ray(), self.actors)
            self.actors = None

    def run(self, call: dict[str, Any], interrupt_check: Callable[[], None] | None = None) -> Tensor:
        """One model call on every rank (``Worker.forward``); rank 0's output. ``interrupt_check`` is called while
        waiting (first right after the call is sent) and may raise to stop waiting."""
        ray = require_ray()
        self.start()
        payload = ray.put(call)
        refs = [a.call.remote("forward", payload) for a in self.actors]
        pending = list(refs)
        while pending:
            if interrupt_check is not None:
                interrupt_check()
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            if any(_failure(ray, ref) is not None for ref in done):
                self._raise_failure(ray, refs)
        return ray.get(refs[0])

    def _raise_failure(self, ray, refs: list) -> None:
        """A rank failed: wait ``grace_s`` for the others, then raise. The error every rank raised alike is raised as
        it is (the group stays up); anything else shuts the group down and raises a ``WorkerError``."""
        _, still = ray.wait(refs, num_returns=len(refs), timeout=self.grace_s)
        failures = [None if ref in still else _failure(ray, ref) for ref in refs]
        rank, first = next((r, f) for r, f in enumerate(failures) if f is not None)
        died = next((r for r, f in enumerate(failures) if isinstance(f, ray.exceptions.RayActorError)), None)
        if died is not None:
            self.shutdown()
            raise _as_worker_error(ray, failures[died], f"rank {died}") from failures[died]
        alike = all(f is not None and type(f) is type(first) and str(f) == str(first) for f in failures)
        if alike:
            raise first  # the model's own error, the same on every rank: the group is consistent
        logger.error("[hyvideo_fp8] rank %d of the multi-GPU model failed:\n%s", rank,
                     _remote_traceback(ray, refs[rank]))
        self.shutdown()
        waiting = " and the other ranks were left waiting for it" if still else ""
        raise WorkerError(f"rank {rank} of the multi-GPU model failed ({type(first).__name__}: {first}){waiting}; "
                          "the ranks were stopped and the next run starts them again") from first


def _failure(ray, ref) -> BaseException | None:
    """What a finished call raised (the model's exception for a task error, the Ray error for a dead actor)."""
    try:
        ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        return err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
    except ray.exceptions.RayActorError as err:
        return err
    return None


def _remote_traceback(ray, ref) -> str:
    """The failed call's traceback on its rank, as Ray reports it."""
    try:
        ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        return getattr(err, "traceback_str", None) or str(err)
    except Exception as err:  # a Ray error without a remote traceback
        return str(err)
    return ""


def _kill(ray, actors: list) -> None:
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # already gone
            pass


def _as_worker_error(ray, err: BaseException, what: str) -> BaseException:
    """A died actor or a failed start as a ``WorkerError`` naming it; other errors (an interrupt) unchanged."""
    if isinstance(err, ray.exceptions.RayActorError):
        return WorkerError(f"a GPU worker process died ({what}): {err}. The other workers were stopped; the next "
                           "run starts them again (if it keeps happening, look for out-of-memory kills in the "
                           "Ray logs under /tmp/ray/session_latest/logs)")
    if isinstance(err, ray.exceptions.GetTimeoutError):
        return WorkerError(f"{what} took longer than the timeout: are the GPUs busy with other Ray work? "
                           "(ray status lists what holds them)")
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
        return WorkerError(f"{what} failed: {type(cause).__name__}: {cause}")
    return err


__all__ = ["WorkerGroup", "WorkerError"]
