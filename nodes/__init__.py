"""ComfyUI glue: every node module contributes its NODE_CLASS_MAPPINGS and display names."""

from . import (
    attention_masks,
    comic_page,
    consistent_attention,
    frame_embeddings,
    identity_bank_files,
    identity_bank_nodes,
    isolated_attention,
    motion_predictor_loader,
    story_prompt,
    story_transition,
    world_model_loader,
)

_MODULES = (
    story_prompt,
    comic_page,
    consistent_attention,
    identity_bank_nodes,
    identity_bank_files,
    isolated_attention,
    attention_masks,
    story_transition,
    motion_predictor_loader,
    frame_embeddings,
    world_model_loader,
)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
