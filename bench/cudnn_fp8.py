"""cuDNN's FP8 SDPA (``nvidia-cudnn-frontend`` graph API) as the speed and accuracy reference for our FP8 attention.

What cuDNN offers on Hopper is per-tensor FP8: one scale each for Q, K, V and P (x448), and an FP8 output (a bf16
output is Blackwell-only in cuDNN 9.19). Around it this module does what a user of that route would have to: smooth K
(subtract its mean over tokens, which softmax ignores), scale Q, K, V into e4m3 by their amax with saturating casts,
and dequantize the FP8 output (whose amax is at most V's). The quantization here is eager torch, so the bench times
the cuDNN kernel alone as well.

Optional: ``nvidia-cudnn-frontend`` is a GPU-only package (not in requirements.txt); without it :func:`available` says
how to install it and the bench leaves this route out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

E4M3_MAX = 448.0
P_SCALE = 448.0  # softmax probabilities are in [0, 1]: P x 448 uses e4m3's whole range


def available() -> tuple[bool, str]:
    """``(True, version)`` when the cuDNN frontend imports, else ``(False, what to do)``."""
    try:
        import cudnn
    except Exception as e:  # noqa: BLE001 (ImportError, or a backend library that fails to load)
        return False, f"nvidia-cudnn-frontend is not importable ({e!r}): pip install nvidia-cudnn-frontend"
    return True, f"nvidia-cudnn-frontend {getattr(cudnn, '__version__', '?')}, cuDNN {cudnn.backend_version()}"


@dataclass
class Fp8Operands:
    """Per-tensor FP8 Q, K (smoothed), V and the float32 scalars cuDNN's graph reads."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    descale_q: torch.Tensor
    descale_k: torch.Tensor
    descale_v: torch.Tensor
    descale_s: torch.Tensor
    scale_s: torch.Tensor
    scale_o: torch.Tensor
    descale_o: torch.Tensor


def quantize_per_tensor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Fp8Operands:
    """Eager per-tensor e4m3 quantization of ``[B, H, L, D]`` Q, K, V, K smoothed first."""
    k = k.float()
    k = k - k.mean(dim=2, keepdim=True)

    def to_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amax = x.abs().amax().float().clamp_min(1e-12)
        scale = E4M3_MAX / amax
        return (x.float() * scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), amax / E4M3_MAX

    (q8, dq), (k8, dk), (v8, dv) = to_e4m3(q), to_e4m3(k), to_e4m3(v)
    one = torch.ones((), device=q.device)

    def scalar(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, 1, 1, 1).float().contiguous()

    # |O| <= max |V| (a convex combination of V's rows), so V's scale fits the output too
    return Fp8Operands(q8, k8, v8, scalar(dq), scalar(dk), scalar(dv), scalar(one / P_SCALE), scalar(one * P_SCALE),
                       scalar(1 / dv), scalar(dv))  # fmt: skip


class CudnnFp8Attention:
    """A built cuDNN FP8 SDPA graph for one ``[B, H, L, D]`` shape; call :meth:`kernel` or :meth:`__call__`."""

    def __init__(self, shape: tuple[int, int, int, int], device: torch.device) -> None:
        import cudnn

        self._cudnn = cudnn
        self.shape = tuple(shape)
        b, h, s, d = self.shape
        stride = (h * s * d, s * d, d, 1)
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        self._handle = cudnn.create_handle()
        g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=self._handle)
        self._q, self._k, self._v = (g.tensor(name=n, dim=self.shape, stride=stride, data_type=e4m3) for n in "qkv")
        scalar = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
        names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        self._scalars = {n: g.tensor(name=n, **scalar) for n in names}
        o, _, amax_s, amax_o = g.sdpa_fp8(
            q=self._q, k=self._k, v=self._v, **self._scalars,
            attn_scale=d**-0.5, use_causal_mask=False, generate_stats=False,
        )  # fmt: skip
        o.set_output(True).set_dim(self.shape).set_stride(stride).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self._graph, self._o, self._amax = g, o, (amax_s, amax_o)
        self._workspace = torch.empty(g.get_workspace_size(), dtype=torch.uint8, device=device)
        self._amax_buf = [torch.empty(1, 1, 1, 1, device=device) for _ in range(2)]

    def kernel(self, ops: Fp8Operands, out8: torch.Tensor) -> torch.Tensor:
        """cuDNN's FP8 SDPA alone: FP8 operands in, FP8 output ``out8`` (scaled by ``ops.scale_o``) out."""
        self._cudnn.set_stream(handle=self._handle, stream=torch.cuda.current_stream().cuda_stream)
        pack = {self._q: ops.q, self._k: ops.k, self._v: ops.v, self._o: out8,
                self._amax[0]: self._amax_buf[0], self._amax[1]: self._amax_buf[1]}  # fmt: skip
        pack.update({t: getattr(ops, n) for n, t in self._scalars.items()})
        self._graph.execute(pack, self._workspace, handle=self._handle)
        return out8

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The whole route from bf16 ``[B, H, L, D]`` to bf16: quantize, attend, dequantize."""
        ops = quantize_per_tensor(q, k, v)
        out8 = self.kernel(ops, torch.empty(q.shape, dtype=torch.float8_e4m3fn, device=q.device))
        return (out8.float() * ops.descale_o).to(q.dtype)
