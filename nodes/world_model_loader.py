"""Story World Toy Model: the small model trained on the pack's procedural world -> MODEL, CLIP, VAE."""

from __future__ import annotations

import os

import folder_paths

from ..world_model.build import DEFAULT_WEIGHTS, load
from .common import CATEGORY_ROOT, StoryError

WORLD_FOLDER = "story_world"
DEFAULT_FILE = DEFAULT_WEIGHTS.name


def register_world_folder() -> None:
    """models/story_world of ComfyUI and the pack's own models/story_world (the shipped weights)."""
    known = folder_paths.folder_names_and_paths.get(WORLD_FOLDER)
    paths = list(known[0]) if known else []
    for p in (str(DEFAULT_WEIGHTS.parent), os.path.join(folder_paths.models_dir, WORLD_FOLDER)):
        if p not in paths:
            paths.append(p)
    folder_paths.folder_names_and_paths[WORLD_FOLDER] = (paths, {".safetensors"})


register_world_folder()


def world_files() -> list[str]:
    files = [n for n in folder_paths.get_filename_list(WORLD_FOLDER) if n != "reader.safetensors"]
    return files or [DEFAULT_FILE]


class StoryWorldModel:
    DESCRIPTION = (
        "A toy text-to-image model (SD1.5 block layout at small widths, CLIP-L-architecture text "
        "encoder, TAESD VAE) trained by the pack on its procedural story world: boys and girls with "
        "black/red/yellow/white hair and red/blue/green/purple/orange (optionally striped) shirts, on the "
        "left or right, on the beach, in the forest, "
        "in the city, at night or in a room. 64x64 images. A toy world for demos and measurements, not art."
    )
    CATEGORY = f"{CATEGORY_ROOT}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "SD1.5-family UNet (every patch of the pack applies).",
        "Text encoder with ComfyUI's CLIP tokenizer.",
        "TAESD-architecture VAE (8x down-sampling, 4 channels).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "weights": (
                    world_files(),
                    {
                        "default": DEFAULT_FILE,
                        "tooltip": "A story world model file (scripts/train_world_model.py).",
                    },
                )
            }
        }

    def load(self, weights):
        path = folder_paths.get_full_path(WORLD_FOLDER, weights)
        if path is None:
            raise StoryError(
                f"Story World Toy Model: weights '{weights}' not found in "
                f"{folder_paths.get_folder_paths(WORLD_FOLDER)}; "
                f"train them with scripts/train_world_model.py or pick a listed file."
            )
        try:
            return load(path)
        except ValueError as e:
            raise StoryError(f"Story World Toy Model: {e}") from e


NODE_CLASS_MAPPINGS = {"StoryDiffWorldModel": StoryWorldModel}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffWorldModel": "Story World Toy Model"}
