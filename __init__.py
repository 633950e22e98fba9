"""HunyuanVideo FP8 for ComfyUI: real FP8 (scaled W8A8 and FP8 attention) HunyuanVideo inference.

ComfyUI imports this file under the pack's folder name. Outside ComfyUI (tests, the command line) the
node mappings stay empty and nothing heavy is imported, so importing the pack is cheap everywhere.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

try:  # only inside a ComfyUI process
    import comfy.model_management  # noqa: F401
except ImportError:
    pass
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
