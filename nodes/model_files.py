"""The diffusion-model file list for the loader and converter widgets.

Inside ComfyUI it is ``folder_paths``' list; outside (tests, tools) the node classes still declare their inputs, with
an empty list, so nothing has to stand in for ComfyUI to inspect them.
"""

from __future__ import annotations


def diffusion_model_files() -> list[str]:
    """Files in ComfyUI's ``diffusion_models`` folders (also ``models/unet``); empty outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return []
    return folder_paths.get_filename_list("diffusion_models")
