"""``PrecisionPolicy``: which layers compute in FP8, as a typed, versioned, JSON-serialisable dataclass.

A policy is data, not code, so it can live in a workflow JSON or a node widget and be checked strictly when read:
unknown fields and bad values are rejected with the field name and the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NamedTuple

from .formats import FP8_FORMATS, HIGH_PRECISION_DTYPES, MODE_NAMES, ComputeMode

__all__ = ["Rule", "AttentionRule", "PrecisionPolicy", "load_policy", "POLICY_VERSION", "ATTENTION_KERNELS"]

POLICY_VERSION = 1

ATTENTION_KERNELS = ("sdpa", "fp8")
# Read from older policy files and dropped: the softmax always runs in fp32, and "fp32" was its only allowed value.
_RETIRED_FIELDS = {"softmax_dtype": "fp32"}

_CHOICES: dict[str, tuple[str, ...]] = {
    "attention": ATTENTION_KERNELS,
    "norm_dtype": ("fp32", "bf16"),
    "compute_dtype": tuple(HIGH_PRECISION_DTYPES),
    "fp8_format": tuple(FP8_FORMATS),
    "activation_scaling": ("per-token", "per-tensor"),
}


class Rule(NamedTuple):
    """``(pattern, mode)``: an fnmatch glob over dotted module names (``*`` also spans dots) and its compute mode."""

    pattern: str
    mode: ComputeMode


class AttentionRule(NamedTuple):
    """``(pattern, kernel)``: a glob over block name prefixes (e.g. ``txt_in.*``) and its attention kernel."""

    pattern: str
    kernel: str


def _mode(value: Any, field: str) -> ComputeMode:
    try:
        return ComputeMode(value)
    except ValueError:
        raise ValueError(f"policy field '{field}' is {value!r}; allowed: {list(MODE_NAMES)}") from None


def _rule(value: Any, index: int) -> Rule:
    if isinstance(value, Mapping):
        value = (value.get("pattern"), value.get("mode")) if set(value) == {"pattern", "mode"} else None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"policy field 'rules[{index}]' must be a [pattern, mode] pair, got {value!r}")
    pattern, mode = value
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"policy field 'rules[{index}]' pattern must be a non-empty string, got {pattern!r}")
    return Rule(pattern, _mode(mode, f"rules[{index}].mode"))


def _attention_rule(value: Any, index: int) -> AttentionRule:
    where = f"attention_rules[{index}]"
    if isinstance(value, Mapping):
        value = (value.get("pattern"), value.get("kernel")) if set(value) == {"pattern", "kernel"} else None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"policy field '{where}' must be a [pattern, kernel] pair, got {value!r}")
    pattern, kernel = value
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"policy field '{where}' pattern must be a non-empty string, got {pattern!r}")
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"policy field '{where}' kernel is {kernel!r}; allowed: {list(ATTENTION_KERNELS)}")
    return AttentionRule(pattern, kernel)


@dataclass(frozen=True)
class PrecisionPolicy:
    """Per-layer precision decisions for a model.

    ``rules`` are tried in order, the first matching glob wins, unmatched layers get ``default_mode``. The first and
    last ``high_precision_boundary_blocks`` blocks (given as name prefixes in execution order) compute entirely in
    ``compute_dtype`` with SDPA attention, which protects the most error-sensitive blocks of video DiTs. A block's
    attention kernel is likewise the first matching ``attention_rules`` glob over its name prefix, else
    ``attention``. The softmax always runs in fp32.
    ``error_budget`` is the accepted relative L2 error of one step's output against the bf16 reference;
    ``error_budgets`` states it per model family where one family's measurement differs (``{"1.5": 0.1}``), and
    ``budget_for`` picks.
    W8A8 layers with at most ``fast_accum_max_k`` input features accumulate entirely in the tensor cores' fast
    (reduced-precision) accumulator instead of promoting partial sums to fp32: faster, and its extra error stays
    small while K is short (0 turns it off).
    """

    version: int = POLICY_VERSION
    name: str = "custom"
    description: str = ""
    rules: tuple[Rule, ...] = ()
    default_mode: ComputeMode = ComputeMode.BF16
    attention: str = "sdpa"
    attention_rules: tuple[AttentionRule, ...] = ()
    norm_dtype: str = "fp32"
    compute_dtype: str = "bf16"
    fp8_format: str = "e4m3fn"
    activation_scaling: str = "per-token"
    high_precision_boundary_blocks: int = 0
    error_budget: float = 0.0
    error_budgets: tuple[tuple[str, float], ...] = ()
    fast_accum_max_k: int = 0

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version != POLICY_VERSION:
            raise ValueError(f"policy field 'version' is {self.version!r}; this pack reads version {POLICY_VERSION}"
                             + (" (the policy is newer: update the pack)" if isinstance(self.version, int)
                                and self.version > POLICY_VERSION else ""))
        for field in ("name", "description"):
            if not isinstance(getattr(self, field), str):
                raise ValueError(f"policy field '{field}' must be a string, got {getattr(self, field)!r}")
        if not self.name:
            raise ValueError("policy field 'name' must not be empty")
        if isinstance(self.rules, (str, bytes)) or not isinstance(self.rules, Sequence):
            raise ValueError(f"policy field 'rules' must be a list of [pattern, mode] pairs, got {self.rules!r}")
        object.__setattr__(self, "rules", tuple(_rule(r, i) for i, r in enumerate(self.rules)))
        if isinstance(self.attention_rules, (str, bytes)) or not isinstance(self.attention_rules, Sequence):
            raise ValueError("policy field 'attention_rules' must be a list of [pattern, kernel] pairs, "
                             f"got {self.attention_rules!r}")
        object.__setattr__(self, "attention_rules",
                           tuple(_attention_rule(r, i) for i, r in enumerate(self.attention_rules)))
        object.__setattr__(self, "default_mode", _mode(self.default_mode, "default_mode"))
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"policy field '{field}' is {getattr(self, field)!r}; allowed: {list(allowed)}")
        hp = {ComputeMode(m) for m in HIGH_PRECISION_DTYPES}
        for where, mode in [("default_mode", self.default_mode)] + [
                (f"rules[{i}] ({r.pattern})", r.mode) for i, r in enumerate(self.rules)]:
            # A high-precision layer receives activations in the compute dtype, so it must compute in it too.
            if mode in hp and mode.value != self.compute_dtype:
                raise ValueError(f"policy field '{where}' is {mode.value!r} but compute_dtype is "
                                 f"{self.compute_dtype!r}: high-precision layers run in the compute dtype; "
                                 f"use {self.compute_dtype!r}")
        n = self.high_precision_boundary_blocks
        if type(n) is not int or n < 0:
            raise ValueError(f"policy field 'high_precision_boundary_blocks' must be an integer >= 0, got {n!r}")
        k = self.fast_accum_max_k
        if type(k) is not int or k < 0:
            raise ValueError(f"policy field 'fast_accum_max_k' must be an integer >= 0 (0: off), got {k!r}")
        b = self.error_budget
        if type(b) not in (int, float) or not math.isfinite(b) or b < 0:
            raise ValueError(f"policy field 'error_budget' must be a finite number >= 0, got {b!r}")
        object.__setattr__(self, "error_budget", float(b))
        pairs = self.error_budgets
        pairs = list(pairs.items()) if isinstance(pairs, Mapping) else pairs
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or any(
                not isinstance(p, Sequence) or len(p) != 2 or not isinstance(p[0], str) or not p[0]
                or type(p[1]) not in (int, float) or not math.isfinite(p[1]) or p[1] < 0 for p in pairs):
            raise ValueError("policy field 'error_budgets' must map model family names to finite numbers >= 0, "
                             f"e.g. {{\"1.5\": 0.1}}, got {self.error_budgets!r}")
        object.__setattr__(self, "error_budgets", tuple(sorted((k, float(v)) for k, v in pairs)))

    # --- decisions ------------------------------------------------------------------------------------------------

    @property
    def high_precision_mode(self) -> ComputeMode:
        return ComputeMode(self.compute_dtype)

    def in_boundary_block(self, module_name: str, block_order: Sequence[str] = ()) -> bool:
        """Whether ``module_name`` lies in one of the first or last ``high_precision_boundary_blocks`` blocks."""
        n = self.high_precision_boundary_blocks
        if n == 0 or not block_order:
            return False
        edges = list(block_order[:n]) + list(block_order[-n:])
        return any(module_name.startswith(prefix) for prefix in edges)

    def mode_for(self, module_name: str, block_order: Sequence[str] = ()) -> ComputeMode:
        """Mode of the linear ``module_name``: boundary blocks, then the first matching rule, then the default."""
        if self.in_boundary_block(module_name, block_order):
            return self.high_precision_mode
        for rule in self.rules:
            if fnmatchcase(module_name, rule.pattern):
                return rule.mode
        return self.default_mode

    def budget_for(self, family: str | None) -> float:
        """The error budget for a model of ``family`` (its own entry in ``error_budgets``, else ``error_budget``)."""
        return dict(self.error_budgets).get(family, self.error_budget)

    def fast_accum_for(self, in_features: int) -> bool:
        """Whether a W8A8 layer with ``in_features`` inputs uses the fast FP8 accumulator."""
        return 0 < in_features <= self.fast_accum_max_k

    def attention_for(self, module_name: str, block_order: Sequence[str] = ()) -> str:
        """Attention kernel ("sdpa" or "fp8") for the block that owns ``module_name``: boundary blocks, then the first
        matching attention rule, then ``attention``."""
        if self.in_boundary_block(module_name, block_order):
            return "sdpa"
        for rule in self.attention_rules:
            if fnmatchcase(module_name, rule.pattern):
                return rule.kernel
        return self.attention

    # --- serialisation --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["rules"] = [[r.pattern, r.mode.value] for r in self.rules]
        d["attention_rules"] = [[r.pattern, r.kernel] for r in self.attention_rules]
        d["default_mode"] = self.default_mode.value
        d["error_budgets"] = dict(self.error_budgets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecisionPolicy:
        if not isinstance(d, Mapping):
            raise ValueError(f"a precision policy must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        for field, only in _RETIRED_FIELDS.items():
            value = d.pop(field, only)
            if value != only:
                raise ValueError(f"policy field '{field}' is {value!r}; allowed: [{only!r}]")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown policy field(s) {unknown}; known fields: {known}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PrecisionPolicy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"precision policy is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def with_overrides(self, **changes: Any) -> PrecisionPolicy:
        """A copy with some fields replaced (validated like a fresh policy)."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown policy field(s) {unknown}; known fields: {known}")
        new_dtype = changes.get("compute_dtype", self.compute_dtype)
        if new_dtype != self.compute_dtype and new_dtype in HIGH_PRECISION_DTYPES:
            # Switching the compute dtype moves the high-precision layers with it (bf16 -> fp32 and back).
            old_mode, new_mode = self.high_precision_mode, ComputeMode(new_dtype)
            swap = lambda m: new_mode if m == old_mode else m  # noqa: E731
            changes.setdefault("default_mode", swap(self.default_mode))
            changes.setdefault("rules", tuple(Rule(r.pattern, swap(r.mode)) for r in self.rules))
        return dataclasses.replace(self, **changes)


def load_policy(
    source: PrecisionPolicy | Mapping[str, Any] | str | Path,
    presets: Mapping[str, PrecisionPolicy] | None = None,
) -> PrecisionPolicy:
    """A policy from a policy object, a dict, a preset name (looked up in ``presets``), a JSON string or a JSON file."""
    if isinstance(source, PrecisionPolicy):
        return source
    if isinstance(source, Mapping):
        return PrecisionPolicy.from_dict(source)
    presets = presets or {}
    if isinstance(source, str):
        if source in presets:
            return presets[source]
        if source.lstrip().startswith("{"):
            return PrecisionPolicy.from_json(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{str(source)!r} is not a preset name (valid: {sorted(presets)}), "
                         "a JSON object or an existing policy file")
    try:
        return PrecisionPolicy.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"policy file {path}: {e}") from None
