"""The story world trainer's parts (scripts/train_world_model.py runs them): the world's pictures and
character masks as tensors, TAESD's encoder thinned to a cheap conv stack, CLIP layers made
trainable, seeded weight initialisation, an EMA of weights, and the RNG state of a checkpoint."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..story_world.draw import draw
from ..story_world.sampling import dataset_item as item


def images_for(indices, seed: int, keep: float):
    """(float images [B,3,H,W] in [0,1], captions) of the world's stream at these indices."""
    pics, caps = [], []
    for i in indices:
        p, c = item(int(i), seed, keep)
        pics.append(np.asarray(draw(p), dtype=np.float32) / 255.0)
        caps.append(c)
    return torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2).contiguous(), caps


def character_masks(indices, seed: int, keep: float) -> torch.Tensor:
    """[B,1,H,W] 1 where the characters are drawn (the picture differs from its empty scene)."""
    masks = []
    for i in indices:
        p, _ = item(int(i), seed, keep)
        full = np.asarray(draw(p), dtype=np.int16)
        empty = np.asarray(draw(dataclasses.replace(p, characters=())), dtype=np.int16)
        masks.append((np.abs(full - empty).sum(-1) > 0).astype(np.float32))
    return torch.from_numpy(np.stack(masks))[:, None]


# ---- the thin encoder inside TAESD's encoder layout -------------------------------------------------
ENC_WIDTH = 32  # channels used of TAESD's 64; the rest stay zero


def thin_encoder_masks(taesd) -> None:
    """Zero TAESD encoder's residual convs (each Block becomes a ReLU) and the unused channels;
    gradients of those weights are masked out by freeze_hooks so they stay zero."""
    enc = taesd.taesd_encoder
    with torch.no_grad():
        for m in enc.modules():
            if m.__class__.__name__ == "Block":
                for p in m.conv.parameters():
                    p.zero_()
                    p.requires_grad_(False)
        convs = [m for m in enc if isinstance(m, torch.nn.Conv2d)]
        for k, c in enumerate(convs):
            w = c.weight
            if k > 0:
                w[:, ENC_WIDTH:] = 0
            if k < len(convs) - 1:
                w[ENC_WIDTH:] = 0
                if c.bias is not None:
                    c.bias[ENC_WIDTH:] = 0
            mask = torch.zeros_like(w)
            mask[: (w.shape[0] if k == len(convs) - 1 else ENC_WIDTH), : (3 if k == 0 else ENC_WIDTH)] = 1
            c.weight.register_hook(lambda g, mask=mask: g * mask)
            if c.bias is not None and k < len(convs) - 1:
                bmask = torch.zeros_like(c.bias)
                bmask[:ENC_WIDTH] = 1
                c.bias.register_hook(lambda g, bmask=bmask: g * bmask)


def thin_encode(taesd, x01: torch.Tensor) -> torch.Tensor:
    """TAESD's encoder computed cheaply: only its non-zero convs and channels (equal to taesd_encoder(x))."""
    enc = taesd.taesd_encoder
    convs = [m for m in enc if isinstance(m, torch.nn.Conv2d)]
    h = x01
    for k, c in enumerate(convs):
        last = k == len(convs) - 1
        w = c.weight[:, :ENC_WIDTH] if k > 0 else c.weight
        if not last:
            w = w[:ENC_WIDTH]
        b = None if c.bias is None else (c.bias if last else c.bias[:ENC_WIDTH])
        h = F.conv2d(h, w, b, stride=c.stride, padding=c.padding)
        if not last:
            h = F.relu(h)
    return h


def trainable_clip_layers() -> None:
    """ComfyUI's CLIP layers add their residuals in place (fine for inference, not for autograd);
    for training, the same sums out of place (identical outputs)."""
    import comfy.clip_model

    def forward(self, x, mask=None, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))

    comfy.clip_model.CLIPLayer.forward = forward


def init_weights(module: torch.nn.Module) -> None:
    """PyTorch's default initialisation (ComfyUI's ops skip it: their weights start empty), seeded."""
    kinds = (
        torch.nn.Conv2d,
        torch.nn.Conv1d,
        torch.nn.Conv3d,
        torch.nn.Linear,
        torch.nn.GroupNorm,
        torch.nn.LayerNorm,
        torch.nn.Embedding,
    )
    for m in module.modules():
        for cls in kinds:
            if isinstance(m, cls):
                cls.reset_parameters(m)
                break


def low_frequency_noise(eps: torch.Tensor, g: torch.Generator, offset: float, coarse: float) -> torch.Tensor:
    """Training noise with extra power at the lowest frequencies, rescaled to unit variance: white noise
    + offset x one constant per channel + coarse x a 2x2 grid of blocks per channel.

    On 8x8 latents SD1.5's schedule leaves the picture's channel means (the scene) readable through
    the noise even at its last timestep (alpha_bar 0.0047: the scene's mean differs by up to ~2.7
    latent units, i.e. 0.19 through the noise against 0.125 of noise on a 64-pixel mean), so a model
    trained on white noise reads the scene from the noise rather than the caption, and at sampling
    time follows the chance mean of its start noise. Hiding those frequencies in the noise makes the
    caption the only source of the scene and of which half a character stands in (with v-prediction:
    alone, on an eps model, it did not make the model use its caption; see the README)."""
    if not offset and not coarse:
        return eps
    b, c, h, w = eps.shape
    const = torch.randn((b, c, 1, 1), generator=g).to(eps.device)
    grid = torch.randn((b, c, 2, 2), generator=g).to(eps.device)
    blocks = F.interpolate(grid, size=(h, w), mode="nearest")
    return (eps + offset * const + coarse * blocks) / (1 + offset**2 + coarse**2) ** 0.5


def v_target(z0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What a v-prediction model outputs for x_t = sqrt(alpha_bar) z0 + sqrt(1 - alpha_bar) eps (the input
    ComfyUI's V_PREDICTION model sampling hands the UNet): sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) z0."""
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * z0


def native_bf16(device: torch.device) -> bool:
    """True where bfloat16 autocast pays: CUDA, or a CPU with bf16 instructions (AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Ema:
    """An exponential moving average of parameters (decay warms up as min(decay, (1+n)/(10+n)))."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1 - d)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)
        self.updates = state["updates"]

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the averages (twice restores them)."""
        for s, p in zip(self.shadow, self.params, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


# ---- state ------------------------------------------------------------------------------------------
def rng_state():
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
