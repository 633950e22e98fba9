"""``HunyuanVideoTransformer``: the HunyuanVideo family with ComfyUI's names and forward.

v1 text-to-video (HYVideo-T/2-cfgdistill), v1 image-to-video (HunyuanVideo-I2V, SkyReels) and HunyuanVideo 1.5, the
variant read from the checkpoint (``HunyuanConfig.variant``). Matches ``comfy.ldm.hunyuan_video.model.HunyuanVideo``
(ComfyUI 0.3.64 and 0.29; 1.5 from 0.29) parameter for parameter, and numerically in fp32
(``tests/host/test_host_model_parity.py``, ``tests/host/test_host_family_parity.py``), with ComfyUI's inputs:
the image-to-video latent concatenated to ``x`` by the host, ``guiding_frame_index`` (token replace: the first
frame's tokens are modulated by the timestep embedding of that index), ``ref_latent`` (reference tokens before
the image tokens), and for 1.5 ``txt_byt5`` (byT5 glyph text), ``clip_fea`` (SigLIP image features), the
condition-type embedding and the step-distilled models' meanflow ``time_r`` (the sampler's next sigma, from
``transformer_options["sample_sigmas"]``; ``disable_time_r`` turns it off). The text stream is
``[vision, byT5, text]`` as in ComfyUI; the joint sequence puts the image tokens first (Tencent's order), which
attention does not see: text-like tokens have no rotation and masks follow the tokens. Deliberate differences,
each towards Tencent's reference implementation:

- the token refiner's pooled text is the mean over *valid* tokens (ComfyUI averages padding too);
- the guidance embedding is computed from ``guidance * 1000`` in fp32 (ComfyUI multiplies in the
  model dtype, so bf16 turns 6.0 into 6016/1000);
- q/k RMS norm and RoPE run in the policy's ``norm_dtype`` with a single cast at the end;
- H, W not divisible by the patch are padded circularly (as ComfyUI's patch embedder does) and the
  output is cropped back (ComfyUI fails at its final reshape there);
- token replace modulates the guiding frame's image tokens in the single-stream blocks too (ComfyUI 0.29 puts the
  text first in that sequence and modulates its leading tokens instead; 0.3.64 agrees with us), and with a batch
  of several samples each gets its own guidance embedding on both modulation rows;
- a text mask covers the text tokens only (byT5 and vision tokens are always attended), at any batch size
  (ComfyUI 0.29 takes a mask only at batch 1 and without byT5 or vision tokens).

``transformer_options`` follows the native model's contract where it can: a host hook runs around
every forward (``forward_wrapper``: ComfyUI's DIFFUSION_MODEL wrappers, e.g. EasyCache), ``block_index``,
``total_blocks``, ``block_type`` and ``img_slice`` are set per block, and ``patches_replace["dit"]``
double/single block replacements are called with ``img``, ``txt``, ``vec``, ``attention_mask`` and
``transformer_options`` and an ``original_block`` (our joint sequence is image first, so ``img_slice`` is
``[0, image tokens]``). What cannot be honoured is refused loudly, once per model: per-attention patches
(``patches["attn1_patch"]`` ...), ``optimized_attention_override`` (attention is chosen per block by the
precision policy) and other replacement keys; ControlNet inputs raise, as do 1.5 inputs given to a model without
the module that reads them.
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
from .conditioning import BYT5, TEXT, VISION, ByT5Mapper, VisionProjection, add_cond_type, meanflow_target
from .config import HunyuanConfig
from .layers import MLPEmbedder, PatchEmbed, timestep_embedding
from .plan import kernel_plan
from .rope import RopeTables, reference_rope_tables, rope_tables

logger = logging.getLogger("hyvideo_fp8")

_PLAIN_DTYPES = (*HIGH_PRECISION_DTYPES.values(), torch.float16)  # what a model without a policy computes in
# ComfyUI passes this for ControlNet, which this model does not run.
_UNSUPPORTED_INPUTS = ("control",)
# 1.5 inputs -> the module that reads them (a model without it refuses the input)
_MODULE_INPUTS = {"txt_byt5": "byt5_in", "clip_fea": "vision_in"}
# The block replacements of ``transformer_options["patches_replace"]["dit"]`` this model calls.
_BLOCK_REPLACEMENTS = ("double_block", "single_block")
# Token-wise work runs over chunks of this many tokens: the largest per-chunk intermediate is linear1's output
# (3 * hidden + mlp_hidden features), and each GEMM still has M >= 32k rows (full tensor-core occupancy); the peak
# memory and speed of other chunk sizes are measured by bench/bench_memory.py --token-chunks.
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
        # HunyuanVideo 1.5's conditioning inputs (hunyuan.conditioning)
        self.byt5_in = ByT5Mapper(*config.byt5_dims, h, **kw) if config.byt5_dims else None
        self.vision_in = VisionProjection(config.vision_in_dim, h, **kw) if config.vision_in_dim else None
        self.cond_type_embedding = nn.Embedding(3, h, **kw) if config.cond_type_embedding else None
        self.time_r_in = MLPEmbedder(256, h, **kw) if config.meanflow else None
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
            raise ValueError(f"HunyuanVideoTransformer does not run ControlNet and got {given}; "
                             "use ComfyUI's native HunyuanVideo model for ControlNet")
        for key, module in _MODULE_INPUTS.items():
            if kwargs.get(key) is not None and getattr(self, module) is None:
                raise ValueError(f"{key} was given but this {cfg.variant} checkpoint has no {module} to read it: "
                                 f"it is a HunyuanVideo 1.5 input; load a 1.5 model or leave the {key} conditioning "
                                 "out")
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            hint = ""
            if cfg.in_channels > cfg.out_channels and x.dim() == 5 and x.shape[1] == cfg.out_channels:
                hint = (f" ({cfg.variant} takes the noise latent with the image-conditioning channels concatenated, "
                        "which ComfyUI's model adds from the image-to-video conditioning)")
            raise ValueError(f"x must be a [B, {cfg.in_channels}, T, H, W] latent, got {tuple(x.shape)}{hint}")
        self._check_extra_inputs(x, kwargs)
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

    def _check_extra_inputs(self, x: Tensor, kwargs: dict[str, Any]) -> None:
        """Shapes of the image-to-video and 1.5 inputs that are given."""
        cfg, b = self.config, x.shape[0]
        for key, dim in (("txt_byt5", cfg.byt5_dims[0] if cfg.byt5_dims else 0), ("clip_fea", cfg.vision_in_dim)):
            t = kwargs.get(key)
            if t is not None and (t.dim() != 3 or t.shape[0] != b or t.shape[2] != dim):
                raise ValueError(f"{key} must be [B={b}, tokens, {dim}], got {tuple(t.shape)}")
        ref = kwargs.get("ref_latent")
        if ref is not None and (ref.dim() != 5 or ref.shape[0] != b or ref.shape[1] != cfg.in_channels):
            raise ValueError(f"ref_latent must be a [B={b}, {cfg.in_channels}, T, H, W] latent, got {tuple(ref.shape)}")
        frame = kwargs.get("guiding_frame_index")
        if frame is not None:
            if frame.numel() not in (1, b):
                raise ValueError(f"guiding_frame_index must hold 1 or B={b} values, got shape {tuple(frame.shape)}")

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
        x, grid = self._patch_padded(x, cdt)
        timestep = timestep.reshape(-1).expand(b)

        img = self.img_in(x)
        vec = self._vector(timestep, y, guidance, kwargs, transformer_options, cdt)
        replaced = grid[1] * grid[2] if vec.dim() == 3 else 0  # token replace: the first frame's tokens

        refiner_modes, double_modes, single_modes = self.attention_modes()
        plan = kernel_plan(self, x.device, cdt)
        context, text_mask = self._text_mask(context.to(cdt), attention_mask)
        txt = self.txt_in(context, timestep, text_mask, ndt, refiner_modes, plan)
        del context
        txt, text_mask = self._conditioning_tokens(txt, text_mask, kwargs, cdt, ndt)

        freqs = rope_tables(grid, cfg.axes_dim, cfg.theta, x.device, _upcast(cdt))
        n_ref = 0
        if kwargs.get("ref_latent") is not None:
            ref, ref_freqs = self._reference_tokens(kwargs["ref_latent"], grid[2], cdt)
            img, freqs, n_ref = torch.cat((ref, img), dim=1), torch.cat((ref_freqs, freqs)), ref.shape[1]
            del ref, ref_freqs
        if self.sequence_parallel is not None:
            img, freqs = self.sequence_parallel.shard(img, freqs)
            replaced = self.sequence_parallel.local_prefix(replaced)  # the guiding frame's tokens in this run
        n_img, n_txt = img.shape[1], txt.shape[1]
        rope = RopeTables(freqs, n_txt, ndt, cdt, fused=self.fused_producers)
        key_mask = None
        if text_mask is not None:
            key_mask = torch.cat([text_mask.new_ones(b, n_img), text_mask], dim=1)
        ctx = BlockInputs(rope=rope, key_padding_mask=key_mask, norm_dtype=ndt, plan=plan,
                          fused_producers=self.fused_producers, token_chunk=self.token_chunk, replaced_tokens=replaced)
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

        if self.sequence_parallel is None:  # the reference tokens leave before the final layer, as in ComfyUI
            out = self.final_layer(joint[:, n_ref:n_img], vec, ndt, replaced)
        else:
            out = self.final_layer(joint[:, :n_img], vec, ndt, replaced)
        del joint
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.gather(out)[:, n_ref:]
        return self._unpatchify(out, grid, (t, h, w))

    def _vector(self, timestep: Tensor, y: Tensor | None, guidance: Tensor | None, kwargs: dict[str, Any],
                transformer_options: dict, cdt: torch.dtype) -> Tensor:
        """The modulation vector ``[B, hidden]``: timestep (+ meanflow time_r) + pooled text + guidance. With a
        ``guiding_frame_index`` (token replace) ``[B, 2, hidden]``: row 0, with the frame index embedded by ``time_in``
        in place of the timestep, modulates the guiding frame's tokens; row 1 every other token."""
        cfg, b = self.config, timestep.shape[0]
        vec = self.time_in(timestep_embedding(timestep).to(cdt))
        if self.time_r_in is not None and not kwargs.get("disable_time_r", False):
            r = meanflow_target(transformer_options, b)
            if r is not None:
                vec_r = self.time_r_in(timestep_embedding(r.to(timestep.device).float(), time_factor=1000.0).to(cdt))
                vec = vec + vec_r if cfg.meanflow_sum else (vec + vec_r) / 2
        pooled = self.vector_in(y[:, :cfg.vec_in_dim].to(cdt)) if self.vector_in is not None else None
        frame = kwargs.get("guiding_frame_index")
        if frame is not None:
            first = self.time_in(timestep_embedding(frame.reshape(-1).expand(b).float().to(timestep.device)).to(cdt))
            vec = torch.stack((first, vec), dim=1)
            if pooled is not None:
                vec = vec + pooled[:, None]
        elif pooled is not None:
            vec = vec + pooled
        if self.guidance_in is not None and guidance is not None:
            g = self.guidance_in(timestep_embedding(guidance.reshape(-1).expand(b).float(), time_factor=1000.0).to(cdt))
            vec = vec + (g[:, None] if vec.dim() == 3 else g)
        return vec

    def _conditioning_tokens(self, txt: Tensor, text_mask: Tensor | None, kwargs: dict[str, Any], cdt: torch.dtype,
                             ndt: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The text stream ``[vision, byT5, text]`` (1.5: each with its condition-type embedding) and its key mask
        (the byT5 and vision tokens are always valid)."""
        emb = self.cond_type_embedding
        text = add_cond_type(txt, emb, TEXT)
        before: list[Tensor] = []
        after: list[Tensor] = []
        byt5 = kwargs.get("txt_byt5")
        if byt5 is not None:  # 1.5 (with the type embedding) puts byT5 before the text, HunyuanImage after it
            (before if emb is not None else after).append(add_cond_type(self.byt5_in(byt5.to(cdt), ndt), emb, BYT5))
        clip = kwargs.get("clip_fea")
        if clip is not None:
            before.insert(0, add_cond_type(self.vision_in(clip.to(cdt), ndt), emb, VISION))
        if not before and not after:
            return text, text_mask
        if text_mask is not None:
            ones = [text_mask.new_ones(p.shape[:2]) for p in before + after]
            text_mask = torch.cat([*ones[:len(before)], text_mask, *ones[len(before):]], dim=1)
        return torch.cat([*before, text, *after], dim=1), text_mask

    def _patch_padded(self, latent: Tensor, cdt: torch.dtype) -> tuple[Tensor, tuple[int, int, int]]:
        """``latent`` in ``cdt``, padded circularly to whole patches (as ComfyUI's patch embedder does), and its patch
        grid (T', H', W')."""
        pt, ph, pw = self.config.patch_size
        t, h, w = latent.shape[2:]
        latent = latent.to(cdt)
        pad = (0, -w % pw, 0, -h % ph, 0, -t % pt)
        if any(pad):
            latent = F.pad(latent, pad, mode="circular")
        return latent, (latent.shape[2] // pt, latent.shape[3] // ph, latent.shape[4] // pw)

    def _reference_tokens(self, ref_latent: Tensor, width: int, cdt: torch.dtype) -> tuple[Tensor, Tensor]:
        """``ref_latent``'s tokens through ``img_in`` and their rotations (time -1, columns after the video's ``width``
        patches)."""
        ref, grid = self._patch_padded(ref_latent, cdt)
        freqs = reference_rope_tables(grid, width, self.config.axes_dim, self.config.theta, ref.device, _upcast(cdt))
        return self.img_in(ref), freqs

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
