"""``HunyuanVideoTransformer``: HunyuanVideo 1.0 (HYVideo-T/2-cfgdistill) with ComfyUI's names and forward.

Matches ``comfy.ldm.hunyuan_video.model.HunyuanVideo`` (ComfyUI 0.3.64 and 0.29) parameter for
parameter, and numerically in fp32 (``tests/host/test_host_model_parity.py``). Deliberate
differences, each towards Tencent's reference implementation:

- the token refiner's pooled text is the mean over *valid* tokens (ComfyUI averages padding too);
- the guidance embedding is computed from ``guidance * 1000`` in fp32 (ComfyUI multiplies in the
  model dtype, so bf16 turns 6.0 into 6016/1000);
- q/k RMS norm and RoPE run in the policy's ``norm_dtype`` with a single cast at the end;
- H, W not divisible by the patch are padded circularly (as ComfyUI's patch embedder does) and the
  output is cropped back (ComfyUI fails at its final reshape there).

``transformer_options`` follows the native model's contract where it can: a host hook runs around
every forward (``forward_wrapper``: ComfyUI's DIFFUSION_MODEL wrappers, e.g. EasyCache), ``block_index``,
``total_blocks``, ``block_type`` and ``img_slice`` are set per block, and ``patches_replace["dit"]``
double/single block replacements are called with ``img``, ``txt``, ``vec``, ``attention_mask`` and
``transformer_options`` and an ``original_block`` (our joint sequence is image first, so ``img_slice`` is
``[0, image tokens]``). What cannot be honoured is refused loudly, once per model: per-attention patches
(``patches["attn1_patch"]`` ...), ``optimized_attention_override`` (attention is chosen per block by the
precision policy) and other replacement keys; ControlNet and I2V inputs raise.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fp8.formats import HIGH_PRECISION_DTYPES, high_precision_dtype
from .blocks import BlockInputs, DoubleStreamBlock, LastLayer, SingleStreamBlock, TokenRefiner
from .config import HunyuanConfig
from .layers import MLPEmbedder, PatchEmbed, timestep_embedding
from .plan import kernel_plan
from .rope import RopeTables, rope_tables

logger = logging.getLogger("hyvideo_fp8")

_PLAIN_DTYPES = (*HIGH_PRECISION_DTYPES.values(), torch.float16)  # what a model without a policy computes in
# ComfyUI passes these for I2V / ControlNet / HunyuanImage; this model is text-to-video only.
_UNSUPPORTED_INPUTS = ("ref_latent", "guiding_frame_index", "control", "txt_byt5")
# The block replacements of ``transformer_options["patches_replace"]["dit"]`` this model calls.
_BLOCK_REPLACEMENTS = ("double_block", "single_block")
# 32k tokens: the largest per-chunk intermediate (linear1's 21504 features in bf16) is 1.4 GB at hidden 3072,
# and each GEMM still has M >= 32k rows (full tensor-core occupancy). 720p (118,800 tokens) runs in 4 chunks.
DEFAULT_TOKEN_CHUNK = 32768


def _upcast(dtype: torch.dtype) -> torch.dtype:
    """At least fp32 (float64 stays float64, for reference runs)."""
    return torch.promote_types(dtype, torch.float32)


def refiner_prefixes(config: HunyuanConfig) -> list[str]:
    return [f"txt_in.individual_token_refiner.blocks.{j}." for j in range(config.refiner_depth)]


class HunyuanVideoTransformer(nn.Module):
    """The diffusion transformer. Every linear is a plain ``nn.Linear`` here; ``hunyuan.loader`` swaps them
    for ``FP8Linear`` as the policy says.

    ``policy`` (a ``fp8.policy.PrecisionPolicy``) sets the compute dtype, the norm dtype and the attention
    kernel per block; ``None`` means: compute in the input's dtype, norms and RoPE in at least fp32, SDPA.

    Attributes read at every forward:
        fused_producers: feed each linear that computes W8A8 from a fused producer (``fp8.fused``: LayerNorm +
            modulation, GELU, concat+GELU straight to FP8 with per-token scales) and run the q/k RMS norm + RoPE
            as one fused prologue when norms are fp32. False: the eager steps (FP8 layers quantize their input).
            Layers in weight-only or high-precision mode take the eager steps either way.
        token_chunk: token-wise steps (linears, norms, GELU, residual adds) run over chunks of this many tokens
            when a stream is longer, so no full-length ``tokens x 4*hidden`` intermediate exists; 0 disables.
            Exact: chunking changes the peak memory, not the result.
    """

    def __init__(self, config: HunyuanConfig, policy=None, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        self.policy = policy
        h, heads = config.hidden_size, config.num_heads
        kw = dict(device=device, dtype=dtype)
        self.img_in = PatchEmbed(config.in_channels, h, config.patch_size, **kw)
        self.time_in = MLPEmbedder(256, h, **kw)
        self.vector_in = MLPEmbedder(config.vec_in_dim, h, **kw) if config.vec_in_dim else None
        self.guidance_in = MLPEmbedder(256, h, **kw) if config.guidance_embed else None
        self.txt_in = TokenRefiner(config.context_in_dim, h, heads, config.refiner_depth, **kw)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(h, heads, config.mlp_ratio, config.qkv_bias, **kw) for _ in range(config.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(h, heads, config.mlp_ratio, **kw) for _ in range(config.depth_single_blocks))
        self.final_layer = LastLayer(h, config.patch_volume, config.out_channels, **kw)
        self._warned_options: set[str] = set()
        # A host's hook around every forward, called as ``forward_wrapper(self._forward, x, timestep, context, y,
        # guidance, attention_mask, transformer_options, **kwargs)`` (the ComfyUI adapter runs its wrappers here).
        self.forward_wrapper: Callable[..., Tensor] | None = None
        # Speed/memory switches, read at every forward (see the class docstring).
        self.fused_producers = True
        self.token_chunk = DEFAULT_TOKEN_CHUNK
        self.block_swap = None  # set by hunyuan.offload.enable_block_swap
        self.kernel_plans: dict = {}  # (device, compute dtype) -> fp8.kernel_plan.KernelPlan, see hunyuan.plan
        # On a rank of a multi-GPU group: its hunyuan.parallel.SequenceParallel, which hands this process a run of the
        # image tokens (``shard``) and joins the runs after the final layer (``gather``).
        self.sequence_parallel = None
        self._compile_pending = False

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: ComfyUI's ``BaseModel.get_dtype`` reads it to cast the sampler's inputs."""
        if self.policy is not None:
            return high_precision_dtype(self.policy.compute_dtype)
        return next((p.dtype for p in self.parameters() if p.dtype in _PLAIN_DTYPES), torch.float32)

    # --- policy ---------------------------------------------------------------------------------------------------

    def set_policy(self, policy) -> None:
        """Switch precision without reloading: FP8Linear modes follow ``policy.mode_for``; a high-precision
        ``nn.Linear`` whose policy mode changed is rebuilt from its own weight (``fp8.apply.make_linear``).
        Attention kernels and norm dtypes are read from ``self.policy`` at every forward.
        """
        from ..fp8.apply import make_linear
        from ..fp8.linear import FP8Linear

        order = self.config.block_order()
        for name, module in list(self.named_modules()):
            if isinstance(module, FP8Linear):
                module.mode = policy.mode_for(name, order)
            elif type(module) is nn.Linear:
                wanted = policy.mode_for(name, order).value
                if HIGH_PRECISION_DTYPES.get(wanted) != module.weight.dtype:
                    parent, _, child = name.rpartition(".")
                    setattr(self.get_submodule(parent), child,
                            make_linear(name, module.weight, module.bias, policy, order))
        self.policy = policy

    def attention_modes(self) -> tuple[list[str], list[str], list[str]]:
        """Attention kernel of each refiner, double and single block under the current policy."""
        cfg = self.config
        order = cfg.block_order()

        def mode(prefix: str) -> str:
            return self.policy.attention_for(prefix, order) if self.policy is not None else "sdpa"

        return ([mode(p) for p in refiner_prefixes(cfg)], [mode(f"double_blocks.{i}.") for i in range(cfg.depth)],
                [mode(f"single_blocks.{i}.") for i in range(cfg.depth_single_blocks)])

    def _dtypes(self, x: Tensor) -> tuple[torch.dtype, torch.dtype]:
        if self.policy is None:
            return x.dtype, _upcast(x.dtype)
        return high_precision_dtype(self.policy.compute_dtype), high_precision_dtype(self.policy.norm_dtype)

    def compile_blocks(self, mode: str | None = None, backend: str = "inductor") -> None:
        """``torch.compile`` every double and single block in place (static shapes; parameter names unchanged).

        Compilation happens during the next forward, which logs how long it took. The fused producers and FP8
        attention are opaque custom ops inside the compiled graphs (``hyvideo_fp8::*``); the q/k norm + RoPE prologue
        runs eagerly between them (a graph break). Blocks with different compute modes (boundary blocks, hybrid
        high-precision steps) get their own graphs.
        """
        if self.block_swap is not None:
            raise RuntimeError("compile_blocks cannot be combined with block swap (every upload would recompile): "
                               "call model.block_swap.remove() first")
        for block in (*self.double_blocks, *self.single_blocks):
            block.compile(mode=mode, dynamic=False, backend=backend)
        self._compile_pending = True

    # --- inputs ---------------------------------------------------------------------------------------------------

    def _check_inputs(self, x: Tensor, context: Tensor, y: Tensor | None, kwargs: dict[str, Any],
                      transformer_options: dict) -> None:
        cfg = self.config
        given = [k for k in _UNSUPPORTED_INPUTS if kwargs.get(k) is not None]
        if given:
            raise ValueError(f"HunyuanVideoTransformer is text-to-video only and got {given}; "
                             "use ComfyUI's native HunyuanVideo model for I2V, ControlNet or HunyuanImage inputs")
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be a [B, {cfg.in_channels}, T, H, W] latent, got {tuple(x.shape)}")
        if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.context_in_dim:
            raise ValueError(f"context must be [B={x.shape[0]}, L, {cfg.context_in_dim}] text states, "
                             f"got {tuple(context.shape)}")
        if context.shape[1] == 0:
            raise ValueError("context has no text tokens; encode a prompt (an empty prompt still has tokens)")
        if cfg.vec_in_dim and (y is None or y.dim() != 2 or y.shape[0] != x.shape[0] or y.shape[1] < cfg.vec_in_dim):
            got = None if y is None else tuple(y.shape)
            raise ValueError(f"y must be the pooled CLIP vector [B={x.shape[0]}, {cfg.vec_in_dim}], got {got}")
        for what in _unhonoured_options(transformer_options):
            if what not in self._warned_options:
                self._warned_options.add(what)
                logger.warning("[hyvideo_fp8] %s is not supported by the FP8 HunyuanVideo model and has no effect "
                               "(attention runs as the precision policy says); use ComfyUI's own loader for "
                               "the node that set it", what)

    @staticmethod
    def _text_mask(context: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Resolve the text mask once per forward: ``(context, key mask or None)``.

        Integer/bool masks are 1 = valid, 0 = padding; floating masks are ComfyUI's additive
        bias (0 = valid, negative = padding). When every sample pads the same positions (always
        the case at batch 1) the padded tokens are dropped, which is exact (they are masked
        everywhere and excluded from the pooled mean) and keeps flash/cuDNN attention usable;
        otherwise a ``[B, L]`` bool mask is returned. Costs one host sync, only when a mask is given.
        """
        if attention_mask is None:
            return context, None
        if attention_mask.shape != context.shape[:2]:
            raise ValueError(f"attention_mask must be [B, L] = {tuple(context.shape[:2])} to match context, "
                             f"got {tuple(attention_mask.shape)}")
        valid = attention_mask >= 0 if attention_mask.is_floating_point() else attention_mask.bool()
        valid_host = valid.cpu()  # the one host sync of a masked forward
        if bool(valid_host.all()):
            return context, None
        if bool((valid_host == valid_host[:1]).all()):
            keep = valid_host[0].nonzero().squeeze(1)
            if keep.numel() == 0:
                raise ValueError("attention_mask marks every text token as padding")
            return context[:, keep.to(context.device)], None
        return context, valid

    # --- forward --------------------------------------------------------------------------------------------------

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor | None = None,
                guidance: Tensor | None = None, attention_mask: Tensor | None = None,
                transformer_options: dict | None = None, **kwargs) -> Tensor:
        """Predict the flow velocity (through the host's ``forward_wrapper`` when one is set).

        Args:
            x: latent ``[B, C, T, H, W]``.
            timestep: ``[B]`` in [0, 1000] (ComfyUI's sigma * 1000).
            context: LLM text states ``[B, L, context_in_dim]``.
            y: pooled CLIP-L vector ``[B, vec_in_dim]``.
            guidance: embedded guidance scale ``[B]`` as ComfyUI passes it (e.g. 6.0; scaled by 1000 here).
            attention_mask: text mask ``[B, L]`` (see ``_text_mask``) or None.
            transformer_options: ComfyUI's per-call options (see the module docstring).
        Returns ``[B, out_channels, T, H, W]`` in the compute dtype.
        """
        transformer_options = {} if transformer_options is None else transformer_options
        if self.forward_wrapper is not None:
            return self.forward_wrapper(self._forward, x, timestep, context, y, guidance, attention_mask,
                                        transformer_options, **kwargs)
        return self._forward(x, timestep, context, y, guidance, attention_mask, transformer_options, **kwargs)

    def _forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor | None, guidance: Tensor | None,
                 attention_mask: Tensor | None, transformer_options: dict, **kwargs) -> Tensor:
        self._check_inputs(x, context, y, kwargs, transformer_options)
        if self._compile_pending:
            self._compile_pending = False
            started = time.perf_counter()
            out = self._forward(x, timestep, context, y, guidance, attention_mask, transformer_options, **kwargs)
            logger.info("[hyvideo_fp8] first forward with compiled blocks took %.1f s of host time "
                        "(compilation included)", time.perf_counter() - started)
            return out
        cfg = self.config
        cdt, ndt = self._dtypes(x)
        b, _, t, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        pad = (0, -w % pw, 0, -h % ph, 0, -t % pt)
        x = x.to(cdt)
        if any(pad):
            x = F.pad(x, pad, mode="circular")
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        timestep = timestep.reshape(-1).expand(b)

        img = self.img_in(x)
        vec = self.time_in(timestep_embedding(timestep).to(cdt))
        if self.vector_in is not None:
            vec = vec + self.vector_in(y[:, :cfg.vec_in_dim].to(cdt))
        if self.guidance_in is not None and guidance is not None:
            g = guidance.reshape(-1).expand(b).float()
            vec = vec + self.guidance_in(timestep_embedding(g, time_factor=1000.0).to(cdt))

        refiner_modes, double_modes, single_modes = self.attention_modes()
        plan = kernel_plan(self, x.device, cdt)
        context, text_mask = self._text_mask(context.to(cdt), attention_mask)
        txt = self.txt_in(context, timestep, text_mask, ndt, refiner_modes, plan)
        del context

        freqs = rope_tables(grid, cfg.axes_dim, cfg.theta, x.device, _upcast(cdt))
        if self.sequence_parallel is not None:
            img, freqs = self.sequence_parallel.shard(img, freqs)
        n_img, n_txt = img.shape[1], txt.shape[1]
        rope = RopeTables(freqs, n_txt, ndt, cdt, fused=self.fused_producers)
        key_mask = None
        if text_mask is not None:
            key_mask = torch.cat([text_mask.new_ones(b, n_img), text_mask], dim=1)
        ctx = BlockInputs(rope=rope, key_padding_mask=key_mask, norm_dtype=ndt, plan=plan,
                          fused_producers=self.fused_producers, token_chunk=self.token_chunk)
        del x

        options = dict(transformer_options)  # per-block fields are ours to set, the caller's dict stays as it was
        replace = options.get("patches_replace", {}).get("dit", {})
        options.update(total_blocks=len(self.double_blocks), block_type="double")
        for i, (block, mode) in enumerate(zip(self.double_blocks, double_modes)):
            options["block_index"] = i
            patch = replace.get(("double_block", i))
            if patch is None:
                img, txt = block(img, txt, vec, ctx, mode)
            else:
                img, txt = _replaced_double(patch, block, mode, img, txt, vec, ctx, key_mask, options)
        joint = torch.cat((img, txt), dim=1)
        options.update(total_blocks=len(self.single_blocks), block_type="single", img_slice=[0, n_img])
        del img, txt
        for i, (block, mode) in enumerate(zip(self.single_blocks, single_modes)):
            options["block_index"] = i
            patch = replace.get(("single_block", i))
            if patch is None:
                joint = block(joint, vec, ctx, mode)
            else:
                joint = _replaced_single(patch, block, mode, joint, vec, ctx, key_mask, options)

        out = self.final_layer(joint[:, :n_img], vec, ndt)
        del joint
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.gather(out)
        return self._unpatchify(out, grid, (t, h, w))

    def _unpatchify(self, out: Tensor, grid: tuple[int, int, int], size: tuple[int, int, int]) -> Tensor:
        """``[B, T'H'W', C*pt*ph*pw]`` -> ``[B, C, T, H, W]`` (features ordered c, pt, ph, pw), cropped to ``size``."""
        b = out.shape[0]
        (gt, gh, gw), (pt, ph, pw) = grid, self.config.patch_size
        c = self.config.out_channels
        out = out.reshape(b, gt, gh, gw, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        out = out.reshape(b, c, gt * pt, gh * ph, gw * pw)
        t, h, w = size
        if out.shape[2:] != (t, h, w):
            out = out[:, :, :t, :h, :w]
        return out.contiguous()


def _unhonoured_options(transformer_options: dict) -> list[str]:
    """The entries of ComfyUI's ``transformer_options`` that this model cannot honour, named for a warning."""
    found = []
    for kind, patches in (transformer_options.get("patches_replace") or {}).items():
        for key in patches:
            if kind != "dit" or not (isinstance(key, tuple) and key[0] in _BLOCK_REPLACEMENTS):
                found.append(f"transformer_options['patches_replace'][{kind!r}][{key!r}]")
    found += [f"transformer_options['patches'][{key!r}]" for key, value in
              (transformer_options.get("patches") or {}).items() if value]
    if transformer_options.get("optimized_attention_override") is not None:
        found.append("transformer_options['optimized_attention_override']")
    return found


def _replaced_double(patch: Callable, block: DoubleStreamBlock, mode: str, img: Tensor, txt: Tensor, vec: Tensor,
                     ctx: BlockInputs, key_mask: Tensor | None, options: dict) -> tuple[Tensor, Tensor]:
    """A ``("double_block", i)`` replacement: ComfyUI's args dict and an ``original_block`` running ours."""

    def original_block(args: dict) -> dict:
        out_img, out_txt = block(args["img"], args["txt"], args["vec"], ctx, mode)
        return {"img": out_img, "txt": out_txt}

    args = {"img": img, "txt": txt, "vec": vec, "attention_mask": key_mask, "transformer_options": options}
    out = patch(args, {"original_block": original_block})
    return out["img"], out["txt"]


def _replaced_single(patch: Callable, block: SingleStreamBlock, mode: str, joint: Tensor, vec: Tensor,
                     ctx: BlockInputs, key_mask: Tensor | None, options: dict) -> Tensor:
    """A ``("single_block", i)`` replacement; ``img`` is the joint sequence, as in ComfyUI."""

    def original_block(args: dict) -> dict:
        return {"img": block(args["img"], args["vec"], ctx, mode)}

    args = {"img": joint, "vec": vec, "attention_mask": key_mask, "transformer_options": options}
    return patch(args, {"original_block": original_block})["img"]


__all__ = ["HunyuanVideoTransformer", "refiner_prefixes", "DEFAULT_TOKEN_CHUNK"]
