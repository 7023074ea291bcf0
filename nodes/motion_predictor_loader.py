"""Load Motion Predictor: a trained Semantic Motion Predictor from the `motion_predictor` models folder."""

from __future__ import annotations

import os

import folder_paths

from ..motion.weights import MotionWeightsError, load_predictor
from .common import CATEGORY_ROOT, StoryError

MOTION_FOLDER = "motion_predictor"
TRAIN_STATE_SUFFIX = ".train-state.safetensors"


def register_motion_predictor_folder() -> None:
    """Make models/motion_predictor a ComfyUI model folder (safetensors only); keeps paths set by
    extra_model_paths."""
    default = os.path.join(folder_paths.models_dir, MOTION_FOLDER)
    known = folder_paths.folder_names_and_paths.get(MOTION_FOLDER)
    paths = list(known[0]) if known else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[MOTION_FOLDER] = (paths, {".safetensors"})


register_motion_predictor_folder()


def predictor_files() -> list[str]:
    return [n for n in folder_paths.get_filename_list(MOTION_FOLDER) if not n.endswith(TRAIN_STATE_SUFFIX)]


class LoadMotionPredictor:
    DESCRIPTION = (
        "Loads a Semantic Motion Predictor trained with `python -m motion.train` (see the README) from "
        "ComfyUI/models/motion_predictor. Only .safetensors files carrying their config are accepted; "
        "pickled "
        "checkpoints are refused. Connect it to Story Transition (SVD) to refine the interpolated per-frame "
        "embeddings."
    )
    CATEGORY = f"{CATEGORY_ROOT}/video"
    FUNCTION = "load"
    RETURN_TYPES = ("MOTION_PREDICTOR",)
    RETURN_NAMES = ("predictor",)
    OUTPUT_TOOLTIPS = (
        "The predictor (embedding size, max frames per transition and width come from the file).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "predictor_name": (
                    predictor_files(),
                    {
                        "tooltip": "A .safetensors predictor in models/motion_predictor (train one on your "
                        "clips with the CLI)."
                    },
                ),
            }
        }

    def load(self, predictor_name: str):
        path = folder_paths.get_full_path(MOTION_FOLDER, predictor_name)
        if path is None:
            raise StoryError(
                f"Load Motion Predictor: predictor_name '{predictor_name}' is not in "
                f"{folder_paths.get_folder_paths(MOTION_FOLDER)}; put the file there and refresh."
            )
        try:
            model = load_predictor(path)
        except MotionWeightsError as e:
            raise StoryError(f"Load Motion Predictor: predictor_name - {e}") from None
        return (model,)


NODE_CLASS_MAPPINGS = {"StoryDiffLoadMotionPredictor": LoadMotionPredictor}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffLoadMotionPredictor": "Load Motion Predictor"}
