"""Model-agnostic FP8 engine: quantization primitives, the ``_scaled_mm`` wrapper, ``FP8Linear``, precision policies.

Torch only. Import the submodules you need (``from .fp8.linear import FP8Linear``); this file imports nothing so that
loading the package stays cheap and never pulls in Triton.
"""
