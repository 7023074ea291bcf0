"""Tiny random-weight DiT models of every family the host runs, built with ComfyUI's own classes.

Each model is made by its `comfy.supported_models` config (so `model_base`, the sampling
settings, the latent format and the conditioning code are the real ones) with the real block
layout: double and single blocks (reduced in number), patch sizes, RoPE axes and theta, and
head dims as the real checkpoints (128 for Flux.1/.2, Chroma, Qwen-Image and Z-Image, 64 for
SD3.5), but two heads and a narrow text width, so a sampling step takes milliseconds on a CPU.

Text: `tiny_flux_clip()` is Flux's own text encoder pair with the real tokenizers (CLIP-L BPE and
T5 sentencepiece, shipped with ComfyUI) and thin random layers: T5 width = the tiny models'
`context_in_dim` (TEXT_WIDTH), CLIP-L pooled width 768 as real. `tiny_qwen_image_clip()` is
Qwen-Image's own text encoder (real Qwen2 BPE tokenizer, the chat template and the template prefix
the context drops) whose language model is a thin random Qwen2.5 decoder without the vision tower
(which the image path never uses for text-only prompts and which is 600M parameters even here). The
other families' text encoders (Qwen3, Mistral, CLIP-G) would be too large even when thin, so their
tests build CONDITIONING directly with `conditioning(family, ...)`: random [1, T, TEXT_WIDTH] token
features plus the extra keys the family's model_base reads (pooled output, guidance).
"""

from __future__ import annotations

import torch

import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.text_encoders.llama
import comfy.text_encoders.qwen_image

TEXT_WIDTH = 64  # text features (T5 / LLM hidden) of the tiny models; real: 4096, 3584, 2560, 15360

FLUX = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": TEXT_WIDTH,
    "hidden_size": 256,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 2,
    "depth_single_blocks": 3,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}
FLUX_SCHNELL = {**FLUX, "guidance_embed": False}
FLUX2 = {
    "image_model": "flux2",
    "in_channels": 128,
    "out_channels": 128,
    "vec_in_dim": None,
    "context_in_dim": TEXT_WIDTH,
    "hidden_size": 256,
    "mlp_ratio": 3.0,
    "num_heads": 2,
    "depth": 2,
    "depth_single_blocks": 3,
    "axes_dim": [32, 32, 32, 32],
    "theta": 2000,
    "patch_size": 1,
    "qkv_bias": False,
    "guidance_embed": True,
    "global_modulation": True,
    "mlp_silu_act": True,
    "ops_bias": False,
    "default_ref_method": "index",
    "ref_index_scale": 10.0,
}
CHROMA = {
    "image_model": "chroma",
    "in_channels": 64,
    "out_channels": 64,
    "context_in_dim": TEXT_WIDTH,
    "hidden_size": 256,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 2,
    "depth_single_blocks": 3,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "in_dim": 64,
    "out_dim": 256,
    "hidden_dim": 64,
    "n_layers": 2,
}
QWEN_IMAGE = {
    "image_model": "qwen_image",
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 3,
    "attention_head_dim": 128,
    "num_attention_heads": 2,
    "joint_attention_dim": TEXT_WIDTH,
    "axes_dims_rope": (16, 56, 56),
}
SD35 = {  # SD3.5 Medium layout: MMDiT-X, image-only self-attention in the first blocks, RMS qk-norm
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "depth": 2,
    "input_size": None,
    "adm_in_channels": 2048,
    "pos_embed_scaling_factor": None,
    "qk_norm": "rms",
    "context_embedder_config": {
        "target": "torch.nn.Linear",
        "params": {"in_features": TEXT_WIDTH, "out_features": 128},
    },
    "num_patches": 64 * 64,
    "pos_embed_max_size": 64,
    "x_block_self_attn_layers": [0],
}
Z_IMAGE = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 256,
    "cap_feat_dim": TEXT_WIDTH,
    "n_layers": 3,
    "n_refiner_layers": 1,
    "qk_norm": True,
    "n_heads": 2,
    "n_kv_heads": 2,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0,
    "ffn_dim_multiplier": 8.0 / 3.0,
    "z_image_modulation": True,
    "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}

DIT_FAMILIES = {
    "flux": (comfy.supported_models.Flux, FLUX),
    "flux_schnell": (comfy.supported_models.FluxSchnell, FLUX_SCHNELL),
    "flux2": (comfy.supported_models.Flux2, FLUX2),
    "chroma": (comfy.supported_models.Chroma, CHROMA),
    "qwen_image": (comfy.supported_models.QwenImage, QWEN_IMAGE),
    "sd35": (comfy.supported_models.SD3, SD35),
    "z_image": (comfy.supported_models.ZImage, Z_IMAGE),
}

# latent channels the sampler works in, per family (Flux.2: 128 = its 32-channel VAE latent patchified 2x2)
LATENT_CHANNELS = {
    "flux": 16,
    "flux_schnell": 16,
    "flux2": 128,
    "chroma": 16,
    "qwen_image": 16,
    "sd35": 16,
    "z_image": 16,
}


def empty_latent(family: str, batch: int, h: int, w: int) -> torch.Tensor:
    """Zeros in the family's latent layout (Qwen-Image: [B, 16, 1, h, w], a one-frame video latent)."""
    if family == "qwen_image":
        return torch.zeros(batch, 16, 1, h, w)
    return torch.zeros(batch, LATENT_CHANNELS[family], h, w)


def _seeded_init(module: torch.nn.Module, seed: int) -> None:
    """Fan-in scaled normal weights, zero biases, unit norms: activations stay O(1) through the blocks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.zero_()
            elif p.ndim == 1 or leaf in ("scale",):
                p.fill_(1.0)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=gen) * (fan_in**-0.5))


def _for_this_host(config: dict) -> dict:
    """ComfyUI 0.33 added fields without defaults to the Flux-style params: `txt_ids_dims` ([3] for
    Flux.2, [] otherwise) and, for Chroma, `vec_in_dim` (None: no vector input), set as its model
    detection sets them. Older hosts have neither, so they are added only where the host has them."""
    import dataclasses

    from comfy.ldm.chroma.model import ChromaParams
    from comfy.ldm.flux.model import FluxParams

    params = {"flux": FluxParams, "flux2": FluxParams, "chroma": ChromaParams}.get(config.get("image_model"))
    if params is None:
        return config
    fields = {f.name for f in dataclasses.fields(params)}
    wanted = {"txt_ids_dims": [3] if config["image_model"] == "flux2" else [], "vec_in_dim": None}
    return {**{k: v for k, v in wanted.items() if k in fields}, **config}


def tiny_dit(family: str = "flux", seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A MODEL (ModelPatcher) of the given DiT family with seeded random weights, on the CPU."""
    if family not in DIT_FAMILIES:
        raise ValueError(f"unknown DiT family {family!r}; one of {sorted(DIT_FAMILIES)}")
    config_cls, unet_config = DIT_FAMILIES[family]
    model_config = config_cls(_for_this_host(dict(unet_config)))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.to(torch.float32)
    _seeded_init(model.diffusion_model, seed)
    model.eval()
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(family: str, panels: int = 1, tokens: int = 16, seed: int = 0) -> list:
    """CONDITIONING built directly: one entry with `panels` rows of random [tokens, TEXT_WIDTH] features."""
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(panels, tokens, TEXT_WIDTH, generator=gen)
    extra: dict = {}
    if family in ("flux", "flux_schnell"):
        extra = {"pooled_output": torch.randn(panels, 768, generator=gen), "guidance": 3.5}
    elif family == "sd35":
        extra = {"pooled_output": torch.randn(panels, 2048, generator=gen)}
    elif family == "chroma":
        extra = {"pooled_output": None}
    elif family == "flux2":
        extra = {
            "guidance": 4.0,
            "pooled_output": None,
        }  # model_base reads the key; Flux.2 has no vector input
    return [[ctx, extra]]


TINY_TEXT_LAYERS = {"num_hidden_layers": 3, "intermediate_size": 64}
TINY_T5 = {"d_model": TEXT_WIDTH, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 2}


def tiny_flux_clip(seed: int = 0) -> comfy.sd.CLIP:
    """Flux's CLIP (real CLIP-L + T5 tokenizers) with thin random layers; T5 width = TEXT_WIDTH."""
    target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip(dtype_t5=torch.float32)
    )
    device = torch.device("cpu")
    options = {
        "clip_l_model_config": dict(TINY_TEXT_LAYERS),
        "t5xxl_model_config": dict(TINY_T5),
        "load_device": device,
        "offload_device": device,
        "initial_device": device,
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target, model_options=options)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return clip


class _TinyQwen25(comfy.sd1_clip.SDClipModel):
    """Qwen-Image's language model slot (as `Qwen25_7BVLIModel`) with the plain Qwen2.5 decoder class."""

    def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
        super().__init__(
            device=device,
            layer="last",
            layer_idx=None,
            textmodel_json_config={},
            dtype=dtype,
            special_tokens={"pad": 151643},
            layer_norm_hidden_state=False,
            model_class=comfy.text_encoders.llama.Qwen25_3B,
            enable_attention_masks=True,
            return_attention_masks=True,
            model_options=model_options or {},
        )


TINY_QWEN25 = {
    "vocab_size": 152064,
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def tiny_qwen_image_clip(seed: int = 0) -> comfy.sd.CLIP:
    """Qwen-Image's CLIP (real tokenizer and template handling) with a thin random decoder of
    width TEXT_WIDTH: its CONDITIONING starts at the user's text, as the real one."""
    target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.qwen_image.QwenImageTokenizer, comfy.text_encoders.qwen_image.QwenImageTEModel
    )
    device = torch.device("cpu")
    options = {
        "qwen25_7b_class": _TinyQwen25,
        "qwen25_7b_model_config": dict(TINY_QWEN25),
        "load_device": device,
        "offload_device": device,
        "initial_device": device,
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target, model_options=options)
    gen = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return clip


def tiny_flux_vae(seed: int = 0) -> comfy.sd.VAE:
    """A 16-channel VAE with the TAESD architecture (as taef1), seeded random weights."""
    import comfy.taesd.taesd

    model = comfy.taesd.taesd.TAESD(latent_channels=16)
    sd = dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed + 2)
    for k, v in sd.items():
        if k.endswith("bias"):
            sd[k] = torch.zeros_like(v)
        elif v.ndim > 1:
            sd[k] = torch.randn(v.shape, generator=gen) * (max(1, v[0].numel()) ** -0.5)
    return comfy.sd.VAE(sd=sd)
