"""Test-only ComfyUI node pack: tiny random-weight checkpoints built locally (never shipped).

Loaded into live test servers (and the README's smoke demo when no CKPT is given) next to
the real pack; its node stands in for CheckpointLoaderSimple.
"""

from .factory import FAMILIES, tiny_checkpoint


class StoryTestTinyCheckpoint:
    DESCRIPTION = "Test/demo only: a tiny random-weight checkpoint with the real block layout of the chosen family. Images are noise, not art."
    CATEGORY = "storydiffusion/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "family": (["sdxl", "sd15"], {"default": "sdxl", "tooltip": "Architecture the tiny model is shaped like."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."}),
            }
        }

    def load(self, family, seed):
        return tiny_checkpoint(family, seed)


NODE_CLASS_MAPPINGS = {"StoryTestTinyCheckpoint": StoryTestTinyCheckpoint}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryTestTinyCheckpoint": "Tiny Test Checkpoint (storydiffusion tests)"}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "FAMILIES"]
