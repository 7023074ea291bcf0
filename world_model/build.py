"""Build (and load) the story world's toy model from ComfyUI's own classes.

* UNet: comfy.supported_models.SD15 with the real SD1.5 block layout (4 levels, transformer
  blocks at the first three, middle block) at small widths; context width = the text encoder's.
* Text encoder: ComfyUI's SD1 CLIP (CLIP-L architecture, ComfyUI's own tokenizer) at small widths.
* VAE: ComfyUI's TAESD architecture (8x down-sampling, 4 latent channels); vae_scale/vae_shift
  put the latents at unit variance for the UNet.

One safetensors file holds all three (prefixes unet. / clip. / vae.) and its configuration in
the metadata, so a loader needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "models" / "story_world" / "story_world.safetensors"

CONTEXT = 128
UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 8,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": CONTEXT,
    "num_head_channels": 32,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
CLIP_CONFIG = {
    "hidden_size": CONTEXT,
    "intermediate_size": 4 * CONTEXT,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "projection_dim": CONTEXT,
}
CPU = torch.device("cpu")


PREDICTIONS = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}


def build_unet(unet_config: dict = UNET_CONFIG, device=CPU, prediction: str = "eps"):
    """The SD1.5-family BaseModel (its .diffusion_model is ComfyUI's UNetModel) in float32, predicting
    the noise ("eps", SD1.5's own) or v ("v", as SD2.x-768 does: on 8x8 latents it makes the picture
    at high noise, where the caption decides it, the model's direct output)."""
    model_config = comfy.supported_models.SD15(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(model_config, model_type=PREDICTIONS[prediction], device=device)
    model.diffusion_model.to(device=device, dtype=torch.float32)
    return model


def build_clip(clip_config: dict = CLIP_CONFIG, device=CPU) -> comfy.sd.CLIP:
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    options = {
        "clip_l_model_config": dict(clip_config),
        "load_device": device,
        "offload_device": CPU,
        "initial_device": device,
        "dtype": torch.float32,
    }
    return comfy.sd.CLIP(target, model_options=options)


def build_taesd() -> comfy.taesd.taesd.TAESD:
    return comfy.taesd.taesd.TAESD(latent_channels=4)


def save(
    path: Path,
    unet: torch.nn.Module,
    clip_model: torch.nn.Module,
    taesd: torch.nn.Module,
    info: dict,
    unet_config: dict = UNET_CONFIG,
    clip_config: dict = CLIP_CONFIG,
    prediction: str = "eps",
) -> None:
    """One file: unet.* (UNetModel), clip.* (the CLIP-L text transformer), vae.* (TAESD); configs in the
    metadata. Stored in float16 (half the size; loaded back as float32)."""
    sd = {}
    for k, v in unet.state_dict().items():
        sd["unet." + k] = v.detach().half().contiguous()
    for k, v in clip_model.state_dict().items():
        v = v.detach()
        sd["clip." + k] = (v.half() if v.is_floating_point() else v).contiguous()
    for k, v in taesd.state_dict().items():
        sd["vae." + k] = v.detach().half().contiguous()
    meta = {
        "unet_config": json.dumps(unet_config),
        "clip_config": json.dumps(clip_config),
        "prediction": prediction,
        "info": json.dumps(info),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file({k: v.cpu() for k, v in sd.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def _split(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def load(path: Path = DEFAULT_WEIGHTS):
    """(MODEL, CLIP, VAE) as a checkpoint loader returns them, from the one safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"story world weights not found at {path}; train them with scripts/train_world_model.py"
        )
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "unet_config" not in meta:
        raise ValueError(f"{path} is not a story world model file (no unet_config in its metadata)")
    sd = safetensors.torch.load_file(str(path))
    prediction = meta.get("prediction", "eps")  # files written before v-prediction predict the noise
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"{path}: unknown prediction type {prediction!r} in its metadata "
            f"(known: {', '.join(PREDICTIONS)}); write the file with scripts/train_world_model.py"
        )
    model = build_unet(json.loads(meta["unet_config"]), prediction=prediction)
    model.diffusion_model.load_state_dict({k: v.float() for k, v in _split(sd, "unet.").items()}, strict=True)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
    clip = build_clip(json.loads(meta["clip_config"]))
    text_sd = {k: v.float() if v.is_floating_point() else v for k, v in _split(sd, "clip.").items()}
    clip.cond_stage_model.clip_l.transformer.load_state_dict(text_sd, strict=True)
    vae_sd = {k: v.float() for k, v in _split(sd, "vae.").items()}
    vae = comfy.sd.VAE(sd=vae_sd)
    return patcher, clip, vae
