"""Training data for the predictor: per-frame embedding clips on disk, windows, synthetic clips.

A frame-embeddings file is a .safetensors file whose every 2-D tensor [frames, dim] is one
clip (the Encode Frame Embeddings node writes one clip per file under "frame_embeds").
Training windows are L consecutive (optionally strided) frames of a clip; the task is to
predict the inner frames from the first and the last.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from .weights import KIND_KEY, MotionWeightsError, read_metadata, read_tensors

EMBEDDINGS_KIND = "frame-embeddings"


class MotionDataError(ValueError):
    """Training data that cannot be used (empty, wrong shapes, too short)."""


def save_frame_embeddings(embeds: torch.Tensor, path, metadata: dict | None = None) -> Path:
    """Write one clip's per-frame embeddings [frames, dim] to a .safetensors file."""
    if embeds.dim() != 2:
        raise MotionDataError(f"frame embeddings must be [frames, dim], got {tuple(embeds.shape)}")
    path = Path(path)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({KIND_KEY: EMBEDDINGS_KIND, "frames": str(embeds.shape[0]), "dim": str(embeds.shape[1])})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"frame_embeds": embeds.detach().float().cpu().contiguous()}, str(path), metadata=meta)
    return path


def find_embedding_files(sources) -> list[Path]:
    """.safetensors files from a list of files and/or directories (searched recursively), sorted."""
    files: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            files.extend(sorted(src.rglob("*.safetensors")))
        elif src.is_file():
            files.append(src)
        else:
            raise MotionDataError(f"{src}: no such file or directory")
    return files


def load_clips(sources, min_frames: int = 3) -> list[torch.Tensor]:
    """Every clip [frames, dim] (float32) of the embedding files; clips shorter than min_frames are
    skipped."""
    clips: list[torch.Tensor] = []
    for path in find_embedding_files(sources):
        try:
            meta = read_metadata(path)
        except MotionWeightsError as e:
            raise MotionDataError(str(e)) from None
        if meta.get(KIND_KEY) not in (None, EMBEDDINGS_KIND):
            continue  # predictor weights or training states living in the same folder
        for _name, t in sorted(read_tensors(path).items()):
            if t.dim() == 2 and t.shape[0] >= min_frames:
                clips.append(t.float())
    if not clips:
        raise MotionDataError(f"no clip with at least {min_frames} frames in {[str(s) for s in sources]}")
    dims = {c.shape[1] for c in clips}
    if len(dims) > 1:
        raise MotionDataError(
            f"clips of different embedding sizes {sorted(dims)}: encode all clips with the same CLIP vision "
            f"model"
        )
    return clips


def split_clips(clips: list[torch.Tensor], holdout: float, seed: int) -> tuple[list, list]:
    """(train, held-out) by a seeded shuffle; at least one clip each when there are two or more."""
    if not 0.0 <= holdout < 1.0:
        raise MotionDataError(f"holdout must be in [0, 1), got {holdout}")
    order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed)).tolist()
    n_hold = int(math.floor(len(clips) * holdout))
    if holdout > 0 and len(clips) >= 2:
        n_hold = max(1, n_hold)
    hold = [clips[i] for i in order[:n_hold]]
    train = [clips[i] for i in order[n_hold:]]
    return train, hold


def sample_windows(
    clips: list[torch.Tensor], batch: int, length: int, max_stride: int, gen: torch.Generator
) -> torch.Tensor:
    """[batch, length, dim] windows of `length` frames, each from a random clip, offset and stride."""
    usable = [c for c in clips if c.shape[0] >= length]
    if not usable:
        raise MotionDataError(f"no clip has {length} frames; lower the frame count or use longer clips")
    out = []
    for _ in range(batch):
        clip = usable[int(torch.randint(len(usable), (1,), generator=gen))]
        top = min(max_stride, (clip.shape[0] - 1) // (length - 1))
        stride = int(torch.randint(1, top + 1, (1,), generator=gen))
        span = (length - 1) * stride + 1
        start = int(torch.randint(clip.shape[0] - span + 1, (1,), generator=gen))
        out.append(clip[start : start + span : stride])
    return torch.stack(out)


def all_windows(clips: list[torch.Tensor], length: int) -> torch.Tensor:
    """Every stride-1 window of `length` frames of every clip (deterministic evaluation set)."""
    wins = [c[s : s + length] for c in clips for s in range(0, c.shape[0] - length + 1)]
    if not wins:
        raise MotionDataError(f"no clip has {length} frames")
    return torch.stack(wins)


def synthetic_clips(
    count: int, frames: int, dim: int, seed: int, world_seed: int = 1234, bend_rank: int | None = None
) -> list[torch.Tensor]:
    """Smooth synthetic trajectories with structure an interpolation misses but a predictor can learn.

    x(t) = a + (b - a) * ease(t) + sin(pi t) * M (b - a): eased timing plus a bend whose
    direction depends on the endpoints through a fixed matrix M shared by every clip
    (`world_seed`), so train and held-out clips (different `seed`) follow the same "physics".
    `bend_rank` makes M low-rank (learnable from few clips in high dimensions).
    """
    world = torch.Generator().manual_seed(world_seed)
    if bend_rank is None:
        bend = torch.randn(dim, dim, generator=world) / math.sqrt(dim)
    else:
        u = torch.randn(dim, bend_rank, generator=world) / math.sqrt(max(1, bend_rank))
        v = torch.randn(dim, bend_rank, generator=world) / math.sqrt(dim)
        bend = u @ v.T
    offset = torch.randn(dim, generator=world) * 2.0
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 1.0, frames).view(-1, 1)
    ease = t * t * (3.0 - 2.0 * t)
    clips = []
    for _ in range(count):
        a = offset + torch.randn(dim, generator=gen)
        b = offset + torch.randn(dim, generator=gen)
        d = b - a
        clips.append(a + d * ease + torch.sin(math.pi * t) * (bend @ d) * 0.5)
    return clips


def describe(clips: list[torch.Tensor]) -> str:
    frames = [c.shape[0] for c in clips]
    return json.dumps(
        {"clips": len(clips), "dim": clips[0].shape[1], "frames_min": min(frames), "frames_max": max(frames)}
    )
