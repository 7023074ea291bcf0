"""Consistent storytelling for ComfyUI: Consistent Self-Attention, Object Isolated Attention and
Semantic-Motion transitions, patched natively into the MODEL you load.

ComfyUI imports this file as a package; nothing runs here beyond collecting the node classes.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
