"""Pure-torch attention math (no ComfyUI import): consistent self-attention, masks, isolation."""
