"""ComfyUI glue: every node module contributes its NODE_CLASS_MAPPINGS and display names."""

from . import comic_page, frame_embeddings, motion_predictor_loader, story_prompt, story_transition

_MODULES = (story_prompt, comic_page, story_transition, motion_predictor_loader, frame_embeddings,)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
