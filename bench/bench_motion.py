"""Semantic Motion Predictor: what it costs per transition and what a short training buys.

Side by side in one run (CPU, pure torch, no ComfyUI):
1. time to build a transition's per-frame embeddings by interpolation alone vs. with the
   default-size predictor (1024-d SVD embeddings, width 512, 4 layers), for 14 and 25 frames;
2. held-out error of plain interpolation vs. a small predictor trained for 300 steps on
   synthetic trajectories (motion.dataset.synthetic_clips): 1024-d (SVD's embedding size)
   with eased timing, and 16-d with eased timing plus an endpoint-dependent bend.

Run: .venv/bin/python bench/bench_motion.py
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _pure(name: str):
    """Import a pure pack module without putting the pack root on sys.path."""
    if "storydiffusion_bench" not in sys.modules:
        parent = types.ModuleType("storydiffusion_bench")
        parent.__path__ = [str(ROOT)]
        sys.modules["storydiffusion_bench"] = parent
    return importlib.import_module(f"storydiffusion_bench.{name}")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000.0


def bench_cost() -> None:
    chain = _pure("motion.chain")
    pred = _pure("motion.predictor")
    model = pred.SemanticMotionPredictor(
        pred.PredictorConfig(embed_dim=1024, width=512, depth=4, heads=8, max_frames=32)
    ).eval()
    keys = torch.randn(2, 1024) * 20
    print(f"predictor: {model.parameter_count() / 1e6:.1f} M parameters (width 512, depth 4)")
    print(f"{'frames':>6} {'interpolation ms':>17} {'with predictor ms':>18} {'ratio':>7}")
    for frames in (14, 25):
        plain = _time(lambda n=frames: chain.chain_frame_embeddings(keys, n, "spherical"), 50)
        refined = _time(lambda n=frames: chain.chain_frame_embeddings(keys, n, "spherical", model), 20)
        print(f"{frames:>6} {plain:>17.3f} {refined:>18.3f} {refined / plain:>7.1f}")


def _train_and_evaluate(dim: int, frames: int, bend_rank, width: int, steps: int = 300) -> tuple[dict, float]:
    dataset = _pure("motion.dataset")
    train = _pure("motion.train")
    clips = dataset.synthetic_clips(512, frames, dim, seed=1, bend_rank=bend_rank)
    held = dataset.synthetic_clips(128, frames, dim, seed=2, bend_rank=bend_rank)  # never trained on
    cfg = train.TrainConfig(
        steps=steps,
        batch_size=32,
        lr=3e-3,
        warmup=20,
        min_frames=frames,
        max_frames=frames,
        max_stride=1,
        width=width,
        depth=2,
        heads=4,
        holdout=0.0,
        checkpoint_every=10_000,
        eval_every=10_000,
    )
    out = Path(tempfile.mkdtemp()) / "bench_motion_predictor.safetensors"
    start = time.perf_counter()
    train.train(cfg, clips, out, progress=False, log=lambda s: None)
    seconds = time.perf_counter() - start
    return train.evaluate(_pure("motion.weights").load_predictor(out), held, frames, "linear"), seconds


def bench_quality() -> None:
    print(
        "held-out relative error (128 unseen synthetic trajectories), plain interpolation vs a predictor "
        "trained 300 steps on 512 trajectories:"
    )
    print(f"{'trajectories':>44} {'interpolation':>14} {'predictor':>10} {'ratio':>6} {'train s':>8}")
    cases = [
        ("1024-d, eased timing, 14 frames", 1024, 14, 0, 64),
        ("16-d, eased timing + bend, 9 frames", 16, 9, None, 64),
    ]
    for name, dim, frames, rank, width in cases:
        r, seconds = _train_and_evaluate(dim, frames, rank, width)
        print(
            f"{name:>44} {r['interpolation']:>14.2e} {r['predictor']:>10.2e} "
            f"{r['predictor'] / r['interpolation']:>6.3f} {seconds:>8.0f}"
        )


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)  # stable numbers on shared cores
    bench_cost()
    bench_quality()
