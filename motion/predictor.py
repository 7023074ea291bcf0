"""The Semantic Motion Predictor: a small transformer over an interpolated embedding sequence.

StoryDiffusion encodes the start and end frames with a CLIP image encoder, interpolates the
two embeddings over the clip's frames and lets a transformer predict the transition
embeddings that condition each frame of the video model. Here the transformer (learned
frame-position and key-frame-indicator embeddings, pre-LN encoder layers over time) predicts a
*residual* on top of the interpolation through two zero-initialised heads, so an untrained
predictor returns the interpolation exactly, and key frames are always pinned to their inputs:
a free residual (width-limited) and per-frame mixing weights over the key-frame embeddings
(full-dimensional, e.g. eased timing).

Inputs are made scale-free by dividing by the mean norm of the sequence's key frames (CLIP
image embeddings are not unit vectors); the residual is scaled back by the same factor.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .interpolation import interpolate_keyframes


class PredictorConfigError(ValueError):
    """A predictor config that cannot build a model."""


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    embed_dim: int = 1024  # CLIP image-embedding size (SVD: ViT-H image_embeds, 1024)
    width: int = 512  # transformer width
    depth: int = 4  # encoder layers
    heads: int = 8
    max_frames: int = 64  # rows of the learned frame-position table
    mlp_ratio: float = 4.0

    def __post_init__(self):
        for name in ("embed_dim", "width", "depth", "heads", "max_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PredictorConfigError(
                    f"predictor config: {name} must be a positive integer, got {value!r}"
                )
        if self.width % self.heads:
            raise PredictorConfigError(
                f"predictor config: width {self.width} is not divisible by heads {self.heads}"
            )
        if self.max_frames < 2:
            raise PredictorConfigError("predictor config: max_frames must be at least 2")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise PredictorConfigError(
                f"predictor config: mlp_ratio must be positive, got {self.mlp_ratio!r}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PredictorConfig:
        if not isinstance(data, dict):
            raise PredictorConfigError(f"predictor config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PredictorConfigError(f"predictor config has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)


class _Block(nn.Module):
    """Pre-LN transformer encoder layer (self-attention over frames, then an MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(round(width * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class SemanticMotionPredictor(nn.Module):
    """Residual transformer over an interpolated sequence of CLIP image embeddings."""

    def __init__(self, config: PredictorConfig | None = None):
        super().__init__()
        self.config = config or PredictorConfig()
        self.metadata: dict[str, str] = {}  # what its weights file says beyond the config (weights.py)
        c = self.config
        self.proj_in = nn.Linear(c.embed_dim, c.width)
        self.norm_in = nn.LayerNorm(c.width)  # content at unit scale, like the position/key embeddings
        self.frame_pos = nn.Parameter(torch.randn(c.max_frames, c.width))
        self.key_embed = nn.Embedding(2, c.width)  # 0 = interpolated frame, 1 = key frame
        nn.init.normal_(self.key_embed.weight, std=1.0)
        self.blocks = nn.ModuleList([_Block(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth)])
        self.norm_out = nn.LayerNorm(c.width)
        # Two zero-initialised heads (untrained == interpolation, exactly):
        # proj_out: a free residual, confined to the span of its `width` output directions;
        # mix_*: per-frame weights over the key-frame embeddings, a residual at full embedding
        # dimension within the keys' span (re-timing such as ease-in/out, overshoot).
        self.proj_out = nn.Linear(c.width, c.embed_dim)
        self.mix_query = nn.Linear(c.width, c.width)
        self.mix_key = nn.Linear(c.width, c.width)
        for head in (self.proj_out, self.mix_query):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, sequence: torch.Tensor, keyframes: torch.Tensor) -> torch.Tensor:
        """sequence [B, L, D] (interpolated embeddings), keyframes bool [L] or [B, L] -> [B, L, D]."""
        if sequence.dim() != 3:
            raise ValueError(f"expected a [batch, frames, dim] sequence, got shape {tuple(sequence.shape)}")
        b, length, dim = sequence.shape
        if dim != self.config.embed_dim:
            raise ValueError(
                f"embedding size {dim} does not match the predictor's embed_dim {self.config.embed_dim}"
            )
        if length > self.config.max_frames:
            raise ValueError(f"{length} frames exceed the predictor's max_frames {self.config.max_frames}")
        keyframes = keyframes.to(device=sequence.device, dtype=torch.bool)
        if keyframes.dim() == 1:
            keyframes = keyframes.unsqueeze(0).expand(b, length)
        if tuple(keyframes.shape) != (b, length):
            raise ValueError(
                f"key-frame mask of shape {tuple(keyframes.shape)} for a sequence of shape "
                f"{tuple(sequence.shape)}"
            )
        if not keyframes.any(dim=1).all():
            raise ValueError("every sequence needs at least one key frame")
        x = sequence.float()
        norms = x.norm(dim=-1)  # [B, L]
        kf = keyframes.float()
        scale = ((norms * kf).sum(1) / kf.sum(1)).clamp_min(1e-6).view(b, 1, 1)
        h = self.norm_in(self.proj_in(x / scale)) + self.frame_pos[:length] + self.key_embed(keyframes.long())
        for block in self.blocks:
            h = block(h)
        h = self.norm_out(h)
        weights = (
            self.mix_query(h) @ self.mix_key(h).transpose(1, 2) / math.sqrt(self.config.width)
        )  # [B, L, L]
        mixed = (weights * kf.unsqueeze(1)) @ (x / scale)  # combinations of the key frames only
        residual = (self.proj_out(h) + mixed) * scale
        out = (x + residual).to(sequence.dtype)
        return torch.where(keyframes.unsqueeze(-1), sequence, out)

    @torch.no_grad()
    def predict(self, keys: torch.Tensor, positions: list[int], mode: str = "linear") -> torch.Tensor:
        """Key embeddings [K, D] at frame positions -> predicted per-frame embeddings [positions[-1]+1, D]."""
        seq, mask = interpolate_keyframes(keys, positions, mode)
        return self(seq.unsqueeze(0), mask)[0]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def suggested_heads(width: int) -> int:
    """A head count dividing `width` with heads of about 64 channels (at least 1)."""
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads


def relative_error(pred: torch.Tensor, target: torch.Tensor, keyframes: torch.Tensor) -> torch.Tensor:
    """Mean over inner frames of |pred - target|^2 / |key-frame norm|^2 (0 = perfect, scale-free)."""
    keyframes = keyframes.to(torch.bool)
    if keyframes.dim() == 1:
        keyframes = keyframes.unsqueeze(0).expand(target.shape[0], -1)
    kf = keyframes.float()
    scale2 = ((target.float().norm(dim=-1) ** 2 * kf).sum(1) / kf.sum(1)).clamp_min(1e-12)  # [B]
    err = ((pred.float() - target.float()) ** 2).sum(-1) / scale2.unsqueeze(1)  # [B, L]
    inner = (~keyframes).float()
    return (err * inner).sum() / inner.sum().clamp_min(1.0)


__all__ = [
    "PredictorConfig",
    "PredictorConfigError",
    "SemanticMotionPredictor",
    "relative_error",
    "suggested_heads",
]
