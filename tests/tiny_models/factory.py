"""Tiny random-weight models built with ComfyUI's own classes, for tests and the smoke demo.

"Shaped" means the real architecture's block layout, transformer depths, context and ADM
dimensions and head sizes, with small channel counts: block keys, batch layouts, context
lengths and hook calls are exactly those of real SD1.5 / SDXL / SVD checkpoints, while a
sampling step takes milliseconds on a CPU. Weights are drawn from a seeded generator, so a
model is identical on every build.
"""

from __future__ import annotations

from pathlib import Path

import torch

import comfy.clip_vision
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd

# Small channel counts; everything else as in the real models.
SD15_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
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
    "context_dim": 768,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SDXL_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SVD_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 768,
    "in_channels": 8,
    "model_channels": 64,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": 1024,
    "num_head_channels": 64,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "extra_ff_mix_layer": True,
    "use_spatial_context": True,
    "merge_strategy": "learned_with_images",
    "merge_factor": 0.0,
    "video_kernel_size": [3, 1, 1],
    "use_temporal_resblock": True,
    "use_temporal_attention": True,
    "disable_temporal_crossattention": False,
}

# A DiT family the pack does not patch: AuraFlow's layout (one double, one single block), width 64.
# (The DiT families the pack patches are built by dit_factory.py.)
AURAFLOW_DIT = {
    "in_channels": 4,
    "out_channels": 4,
    "patch_size": 2,
    "dim": 64,
    "n_layers": 2,
    "n_double_layers": 1,
    "n_heads": 2,
    "global_conddim": 64,
    "cond_seq_dim": 64,
    "max_seq": 32 * 32,
}

FAMILIES = {
    "sd15": (comfy.supported_models.SD15, SD15_UNET),
    "sdxl": (comfy.supported_models.SDXL, SDXL_UNET),
    "svd": (comfy.supported_models.SVD_img2vid, SVD_UNET),
    "auraflow": (comfy.supported_models.AuraFlow, AURAFLOW_DIT),
}

# Text encoders keep their real hidden sizes (so contexts are 768 / 2048 wide and pooled
# outputs 1280, as the UNets expect) but have three thin layers (layer -2 must exist).
TINY_TEXT_LAYERS = {"num_hidden_layers": 3, "intermediate_size": 64}


def _seeded_init(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Fill every parameter and buffer-free weight deterministically (ComfyUI's ops leave them empty)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.zero_()
            elif p.ndim == 1 and ("norm" in name or leaf in ("weight",)):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)


def _seeded_init_unet(module: torch.nn.Module, seed: int) -> None:
    """UNet init: fan-in scaled so activations stay O(1) through the network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=gen) * (fan_in**-0.5))


def tiny_unet(family: str = "sdxl", seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A MODEL (ModelPatcher) of the given family with seeded random weights, on the CPU."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {sorted(FAMILIES)}")
    config_cls, unet_config = FAMILIES[family]
    model_config = config_cls(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.to(torch.float32)
    _seeded_init_unet(model.diffusion_model, seed)
    model.eval()
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def tiny_clip(family: str = "sdxl", seed: int = 0, embedding_directory=None) -> comfy.sd.CLIP:
    """A CLIP (text encoder + real tokenizer) whose context matches the family's UNet.

    embedding_directory: where `embedding:name` in a prompt is looked up, as a checkpoint loader
    passes folder_paths.get_folder_paths("embeddings") (textual-inversion files).
    """
    if family == "sd15":
        target = comfy.supported_models_base.ClipTarget(
            comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel
        )
        options = {"clip_l_model_config": dict(TINY_TEXT_LAYERS)}
    elif family == "sdxl":
        target = comfy.supported_models_base.ClipTarget(
            comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel
        )
        options = {
            "clip_l_model_config": dict(TINY_TEXT_LAYERS),
            "clip_g_model_config": dict(TINY_TEXT_LAYERS),
        }
    else:
        raise ValueError(f"no text encoder for family {family!r}")
    device = torch.device("cpu")
    options.update(
        {"load_device": device, "offload_device": device, "initial_device": device, "dtype": torch.float32}
    )
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, model_options=options)
    _seeded_init(clip.cond_stage_model, seed + 1)
    return clip


def tiny_vae(seed: int = 0) -> comfy.sd.VAE:
    """A VAE with the TAESD architecture (the small real one ComfyUI ships), seeded random weights."""
    model = comfy.taesd.taesd.TAESD(latent_channels=4)
    sd = {k: v for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 2)
    for k, v in sd.items():
        if k.endswith("bias"):
            sd[k] = torch.zeros_like(v)
        elif v.ndim > 1:
            sd[k] = torch.randn(v.shape, generator=gen) * (max(1, v[0].numel()) ** -0.5)
    return comfy.sd.VAE(sd=sd)


# A ViT with the layout of CLIP ViT-H/14 (class token, patches, pre/post norms, projection) but
# 2 layers of width 32 at 56x56 input; projection_dim stays 1024 so image_embeds are [B, 1024]
# exactly as SVD's ViT-H gives them.
TINY_CLIP_VISION_CONFIG = Path(__file__).with_name("tiny_clip_vision_config.json")


def tiny_clip_vision(seed: int = 0) -> comfy.clip_vision.ClipVisionModel:
    """A CLIP_VISION (comfy.clip_vision.ClipVisionModel) with seeded random weights."""
    clip_vision = comfy.clip_vision.ClipVisionModel(str(TINY_CLIP_VISION_CONFIG))
    _seeded_init(clip_vision.model, seed + 3, std=0.2)
    return clip_vision


def tiny_checkpoint(family: str = "sdxl", seed: int = 0):
    """(MODEL, CLIP, VAE) as a checkpoint loader would return them."""
    return tiny_unet(family, seed), tiny_clip(family, seed), tiny_vae(seed)
