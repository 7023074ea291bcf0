"""Predictor weights on disk: .safetensors only, with the model config stored in the file's metadata.

Pickle-based checkpoints (.pt, .pth, .ckpt, .bin) are refused outright: unpickling can run
arbitrary code, and a safetensors file carries everything needed (tensors + config).
A file whose tensors do not fit its config, or that is not a predictor file at all, raises
MotionWeightsError naming the file and what is wrong.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .predictor import PredictorConfig, PredictorConfigError, SemanticMotionPredictor

KIND_KEY = "storydiffusion.kind"
CONFIG_KEY = "storydiffusion.config"
PREDICTOR_KIND = "motion-predictor"
TRAIN_STATE_KIND = "motion-predictor-train-state"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


class MotionWeightsError(ValueError):
    """A weights file that cannot be used as a motion predictor (the message says why and what to do)."""


def check_safetensors_file(path) -> Path:
    """The path, if it names an existing, genuine safetensors file; else MotionWeightsError."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise MotionWeightsError(
            f"{path.name}: pickled checkpoints ({', '.join(PICKLE_SUFFIXES)}) are refused because loading "
            f"them can run "
            "arbitrary code; save the predictor as .safetensors (motion.weights.save_predictor or the "
            "training CLI)"
        )
    if path.suffix.lower() != ".safetensors":
        raise MotionWeightsError(
            f"{path.name}: not a .safetensors file; predictor weights must be saved as .safetensors"
        )
    if not path.is_file():
        raise MotionWeightsError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= path.stat().st_size - 8:
        return path  # an 8-byte little-endian header length, then the JSON header
    if head[:4] == b"PK\x03\x04" or (
        head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    ):
        raise MotionWeightsError(
            f"{path.name}: this is a pickled (torch.save) file renamed to .safetensors; refused"
        )
    raise MotionWeightsError(f"{path.name}: not a valid safetensors file (bad header)")


def read_metadata(path) -> dict:
    path = check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise MotionWeightsError(f"{path.name}: unreadable safetensors file ({e})") from None


def read_tensors(path, prefix: str = "") -> dict[str, torch.Tensor]:
    path = check_safetensors_file(path)
    with safe_open(str(path), framework="pt") as f:
        return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def config_from_metadata(meta: dict, name: str) -> PredictorConfig:
    raw = meta.get(CONFIG_KEY)
    if raw is None:
        raise MotionWeightsError(
            f"{name}: no predictor config in the file's metadata; it is not a motion predictor file"
        )
    try:
        return PredictorConfig.from_dict(json.loads(raw))
    except (json.JSONDecodeError, TypeError, PredictorConfigError) as e:
        raise MotionWeightsError(f"{name}: the stored predictor config is invalid ({e})") from None


def save_predictor(model: SemanticMotionPredictor, path, extra_metadata: dict | None = None) -> Path:
    """Write the predictor's weights and config to a .safetensors file."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise MotionWeightsError(f"{path.name}: predictor weights are written as .safetensors only")
    meta = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    meta.update({KIND_KEY: PREDICTOR_KIND, CONFIG_KEY: json.dumps(model.config.to_dict(), sort_keys=True)})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def build_from_tensors(config: PredictorConfig, tensors: dict, name: str) -> SemanticMotionPredictor:
    """A predictor of `config` holding `tensors`; any missing, extra or mis-shaped tensor is an error."""
    model = SemanticMotionPredictor(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    shapes = [
        f"{k}: file {tuple(tensors[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or extra or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:4]) + (" ..." if len(shapes) > 4 else ""))
        if missing:
            parts.append(f"missing {missing[:4]}" + (" ..." if len(missing) > 4 else ""))
        if extra:
            parts.append(f"unexpected {extra[:4]}" + (" ..." if len(extra) > 4 else ""))
        raise MotionWeightsError(
            f"{name}: the weights do not match the stored config {config.to_dict()}: " + ", ".join(parts)
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return model


def load_predictor(path, device="cpu") -> SemanticMotionPredictor:
    """A predictor (eval mode) from a .safetensors file written by save_predictor."""
    path = check_safetensors_file(path)
    meta = read_metadata(path)
    kind = meta.get(KIND_KEY)
    if kind == TRAIN_STATE_KIND:
        raise MotionWeightsError(
            f"{path.name}: this is a training-state file (for --resume); load the predictor file "
            "the training wrote next to it instead"
        )
    if kind != PREDICTOR_KIND:
        raise MotionWeightsError(
            f"{path.name}: not a motion predictor file (metadata kind {kind!r}, expected {PREDICTOR_KIND!r})"
        )
    config = config_from_metadata(meta, path.name)
    model = build_from_tensors(config, read_tensors(path), path.name)
    model.metadata = {
        k: v for k, v in meta.items() if k not in (KIND_KEY, CONFIG_KEY)
    }  # e.g. "interpolation"
    return model.to(device).eval()
