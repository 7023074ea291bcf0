"""Train a Semantic Motion Predictor on per-frame CLIP embeddings of video clips.

The task: from the first and last embedding of a window of L frames, predict the inner
frames. The loss is the scale-free squared error of the inner frames (motion.predictor.
relative_error); the interpolation alone is the baseline the predictor has to beat.

Command line (run from the pack folder):

    python -m motion.train --data my_clip_embeddings/ --out models/motion_predictor/mine.safetensors

Checkpoints (`--checkpoint-every`) write the predictor file and `<out stem>.train-state.safetensors`
(weights, optimiser, step); `--resume` continues from that state, also after Ctrl-C, which saves
one before exiting. Batches depend only on (seed, step), so a resumed run repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from .dataset import all_windows, describe, load_clips, sample_windows, split_clips, synthetic_clips
from .interpolation import MODES, interpolate
from .predictor import PredictorConfig, SemanticMotionPredictor, relative_error, suggested_heads
from .weights import (
    CONFIG_KEY,
    KIND_KEY,
    TRAIN_STATE_KIND,
    MotionWeightsError,
    build_from_tensors,
    config_from_metadata,
    read_metadata,
    read_tensors,
    save_predictor,
)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 100
    min_frames: int = 8  # window lengths drawn per step from [min_frames, max_frames]
    max_frames: int = 16  # also the predictor's max_frames (frames per transition it accepts)
    max_stride: int = 2  # windows may skip frames (faster motion) up to this stride
    mode: str = "linear"  # interpolation the predictor refines
    width: int = 256
    depth: int = 4
    heads: int = 0  # 0 = width // 64
    seed: int = 0
    holdout: float = 0.1  # fraction of clips held out for evaluation
    checkpoint_every: int = 500
    eval_every: int = 250

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 3 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 3 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        for name in ("steps", "batch_size", "max_stride", "checkpoint_every", "eval_every", "width", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def predictor_config(self, embed_dim: int) -> PredictorConfig:
        heads = self.heads or suggested_heads(self.width)
        return PredictorConfig(
            embed_dim=embed_dim, width=self.width, depth=self.depth, heads=heads, max_frames=self.max_frames
        )


def state_path_for(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".train-state.safetensors")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10 % (a pure function of the step, for exact resumption)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def batch_for_step(cfg: TrainConfig, clips, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    longest = max(c.shape[0] for c in clips)
    top = min(cfg.max_frames, longest)
    low = min(cfg.min_frames, top)
    length = int(torch.randint(low, top + 1, (1,), generator=gen))
    return sample_windows(clips, cfg.batch_size, length, cfg.max_stride, gen)


def endpoints_interpolation(windows: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(interpolation of each window's first and last frame [B, L, D], key mask [L])."""
    length = windows.shape[1]
    seq = interpolate(windows[:, 0], windows[:, -1], length, mode)
    mask = torch.zeros(length, dtype=torch.bool)
    mask[0] = mask[-1] = True
    return seq, mask


@torch.no_grad()
def evaluate(model: SemanticMotionPredictor, clips, length: int, mode: str, chunk: int = 256) -> dict:
    """Held-out error of the predictor and of the plain interpolation on every window of `length` frames."""
    wins = all_windows(clips, length)
    was_training = model.training
    model.eval()
    pred_sum = interp_sum = 0.0
    for i in range(0, wins.shape[0], chunk):
        w = wins[i : i + chunk]
        seq, mask = endpoints_interpolation(w, mode)
        n = w.shape[0]
        pred_sum += float(relative_error(model(seq, mask), w, mask)) * n
        interp_sum += float(relative_error(seq, w, mask)) * n
    model.train(was_training)
    return {
        "windows": int(wins.shape[0]),
        "frames": length,
        "predictor": pred_sum / wins.shape[0],
        "interpolation": interp_sum / wins.shape[0],
    }


def save_train_state(path: Path, model, optimizer, step: int, cfg: TrainConfig) -> Path:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1).contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]
    ]
    meta = {
        KIND_KEY: TRAIN_STATE_KIND,
        CONFIG_KEY: json.dumps(model.config.to_dict(), sort_keys=True),
        "step": str(step),
        "train_config": json.dumps(dataclasses.asdict(cfg)),
        "param_groups": json.dumps(groups),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_train_state(path: Path):
    """(model, optimizer state dict, next step, TrainConfig) from a training-state file."""
    meta = read_metadata(path)
    if meta.get(KIND_KEY) != TRAIN_STATE_KIND:
        raise MotionWeightsError(
            f"{Path(path).name}: not a training-state file (written by python -m motion.train)"
        )
    model = build_from_tensors(
        config_from_metadata(meta, Path(path).name), read_tensors(path, "model."), Path(path).name
    )
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    shapes = {i: p.shape for i, p in enumerate(model.parameters())}
    state: dict = {}
    for key, value in read_tensors(path, "optim.").items():
        index, name = key.split(".", 1)
        idx = int(index)
        state.setdefault(idx, {})[name] = value.reshape(()) if name == "step" else value.reshape(shapes[idx])
    return (
        model,
        {"state": state, "param_groups": groups},
        int(meta["step"]),
        TrainConfig(**json.loads(meta["train_config"])),
    )


def train(
    cfg: TrainConfig,
    clips,
    out: Path,
    resume: Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    log=print,
) -> dict:
    """Train (or resume) and write the predictor to `out`; returns the last held-out evaluation."""
    cfg.check()
    out = Path(out)
    torch.manual_seed(cfg.seed)
    start = 0
    if resume is not None:
        model, opt_state, start, saved = load_train_state(Path(resume))
        cfg = dataclasses.replace(
            saved, steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        optimizer.load_state_dict(opt_state)
        log(f"resumed from {resume} at step {start} of {cfg.steps}")
    else:
        model = SemanticMotionPredictor(cfg.predictor_config(clips[0].shape[1]))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_clips, held = split_clips(clips, cfg.holdout, cfg.seed)
    eval_clips = held or train_clips
    eval_len = min(cfg.max_frames, min(c.shape[0] for c in eval_clips))
    model.train()
    state_path = state_path_for(out)
    bar = _progress_bar(cfg.steps, start, progress)
    completed = start
    result = evaluate(model, eval_clips, eval_len, cfg.mode)

    def say(text: str):
        (bar.write if bar is not None and log is print else log)(text)

    def checkpoint(at: int):
        save_train_state(state_path, model, optimizer, at, cfg)
        save_predictor(
            model, out, {"interpolation": cfg.mode, "trained_steps": at, "heldout": json.dumps(result)}
        )

    try:
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            windows = batch_for_step(cfg, train_clips, step)
            seq, mask = endpoints_interpolation(windows, cfg.mode)
            loss = relative_error(model(seq, mask), windows, mask)
            loss_value = float(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            completed = step + 1
            if on_step is not None:
                on_step(step, loss_value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if completed % cfg.eval_every == 0 or completed == cfg.steps:
                result = evaluate(model, eval_clips, eval_len, cfg.mode)
                say(
                    f"step {completed}: held-out error predictor {result['predictor']:.5f} "
                    f"vs interpolation {result['interpolation']:.5f}"
                )
            if completed % cfg.checkpoint_every == 0 or completed == cfg.steps:
                checkpoint(completed)
    except KeyboardInterrupt:
        checkpoint(completed)  # a step interrupted before its update is repeated on resume
        say(
            f"interrupted: state saved at step {completed} in {state_path}; continue with --resume "
            f"{state_path}"
        )
        raise
    finally:
        if bar is not None:
            bar.close()
    if start >= cfg.steps:
        checkpoint(start)
    return result


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # a bar is a convenience; evaluation lines still report progress
        return None
    return tqdm(total=total, initial=initial, desc="motion predictor", unit="step")


ARG_HELP = {
    "steps": "total optimiser steps",
    "batch_size": "windows per step",
    "lr": "peak learning rate (warm-up, cosine decay)",
    "weight_decay": "AdamW weight decay",
    "warmup": "warm-up steps",
    "min_frames": "shortest training window",
    "max_frames": "longest training window = most frames per transition the predictor accepts",
    "max_stride": "windows may skip up to this many frames (faster motion)",
    "mode": "interpolation the predictor refines",
    "width": "transformer width",
    "depth": "transformer layers",
    "heads": "attention heads (0 = width // 64)",
    "seed": "seed of weights, batches and the held-out split",
    "holdout": "fraction of clips held out for evaluation",
    "checkpoint_every": "write the predictor and the training state every N steps",
    "eval_every": "held-out evaluation every N steps",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m motion.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        nargs="+",
        help="frame-embedding .safetensors files or folders (from Encode Frame Embeddings)",
    )
    p.add_argument(
        "--synthetic",
        type=int,
        default=0,
        help="train on N synthetic smooth clips instead of --data (a smoke test)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="predictor file to write (.safetensors), e.g. ComfyUI/models/motion_predictor/mine.safetensors",
    )
    p.add_argument("--resume", help="a .train-state.safetensors file to continue from")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        kind = type(getattr(defaults, f.name))
        extra = {"choices": MODES} if f.name == "mode" else {}
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=getattr(defaults, f.name),
            help=f"{ARG_HELP.get(f.name, '')} (default {getattr(defaults, f.name)})".strip(),
            **extra,
        )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if args.synthetic:
        clips = synthetic_clips(args.synthetic, max(cfg.max_frames * 2, 24), 64, seed=cfg.seed)
    elif args.data:
        clips = load_clips(args.data, min_frames=3)
    else:
        print("give --data (embedding files or folders) or --synthetic N", file=sys.stderr)
        return 2
    print(f"data: {describe(clips)}")
    try:
        result = train(
            cfg,
            clips,
            Path(args.out),
            Path(args.resume) if args.resume else None,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        return 130
    print(json.dumps({"out": args.out, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
