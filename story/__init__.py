"""Pure story-text handling (no ComfyUI import): the Story Prompt syntax and style presets."""
