"""Import the pack for tests without ever putting its root on sys.path.

* load_pack(): through ComfyUI's own `nodes.load_custom_node`, as the server does, so relative
  imports, WEB_DIRECTORY and the mappings behave exactly as in production.
* pure(name): a pure-torch subpackage (attention, motion, story) imported under a synthetic
  parent package whose __init__ is *not* run, so no ComfyUI module is touched.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE_PARENT = "storydiffusion_pure"


def pack_module_name() -> str:
    return str(ROOT).replace(".", "_x_")  # the sys.modules key nodes.load_custom_node uses


def load_pack():
    name = pack_module_name()
    if name not in sys.modules:
        import nodes as comfy_nodes  # ComfyUI's top-level nodes.py (the host root is on sys.path)

        ok = asyncio.run(comfy_nodes.load_custom_node(str(ROOT)))
        if not ok:
            raise ImportError(f"ComfyUI could not load the pack from {ROOT}; see the log above")
    return sys.modules[name]


def submodule(dotted: str):
    """A submodule of the loaded pack, e.g. submodule('nodes.story_prompt')."""
    load_pack()
    return importlib.import_module(f"{pack_module_name()}.{dotted}")


def pure(dotted: str):
    if PURE_PARENT not in sys.modules:
        parent = types.ModuleType(PURE_PARENT)
        parent.__path__ = [str(ROOT)]
        sys.modules[PURE_PARENT] = parent
    return importlib.import_module(f"{PURE_PARENT}.{dotted}")
