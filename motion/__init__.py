"""Pure-torch motion math (no ComfyUI import): embedding interpolation and the Semantic Motion Predictor."""
