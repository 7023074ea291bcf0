"""Test-only ComfyUI node pack: tiny random-weight checkpoints built locally (never shipped).

Loaded into live test servers (and the README's smoke demo when no CKPT is given) next to
the real pack; its node stands in for CheckpointLoaderSimple.
"""

from .dit_factory import tiny_dit, tiny_flux_clip, tiny_flux_vae
from .factory import FAMILIES, tiny_checkpoint, tiny_clip_vision, tiny_unet, tiny_vae


class StoryTestTinyCheckpoint:
    DESCRIPTION = (
        "Test/demo only: a tiny random-weight checkpoint with the real block layout of the chosen family. "
        "Images are noise, not art."
    )
    CATEGORY = "storydiffusion/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "family": (
                    ["sdxl", "sd15", "flux"],
                    {
                        "default": "sdxl",
                        "tooltip": "Architecture the tiny model is shaped like "
                        "(flux: Flux.1-dev blocks with a thin CLIP-L + T5 pair and a 16-channel "
                        "TAESD-style VAE).",
                    },
                ),
                "seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."},
                ),
            }
        }

    def load(self, family, seed):
        if family == "flux":
            return tiny_dit("flux", seed), tiny_flux_clip(seed), tiny_flux_vae(seed)
        return tiny_checkpoint(family, seed)


class StoryTestTinySVD:
    DESCRIPTION = (
        "Test/demo only: a tiny random-weight Stable Video Diffusion img2vid model (real SVD block layout, "
        "temporal blocks, 1024-d context) with a tiny CLIP vision encoder and VAE; stands in for Image Only "
        "Checkpoint Loader. Videos are noise, not art."
    )
    CATEGORY = "storydiffusion/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP_VISION", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."},
                )
            }
        }

    def load(self, seed):
        return tiny_unet("svd", seed), tiny_clip_vision(seed), tiny_vae(seed)


NODE_CLASS_MAPPINGS = {
    "StoryTestTinyCheckpoint": StoryTestTinyCheckpoint,
    "StoryTestTinySVD": StoryTestTinySVD,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StoryTestTinyCheckpoint": "Tiny Test Checkpoint (storydiffusion tests)",
    "StoryTestTinySVD": "Tiny Test SVD Checkpoint (storydiffusion tests)",
}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "FAMILIES"]
