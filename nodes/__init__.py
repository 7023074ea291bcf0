"""ComfyUI glue: every node module contributes its NODE_CLASS_MAPPINGS and display names."""

from . import comic_page, story_prompt

_MODULES = (story_prompt, comic_page)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
