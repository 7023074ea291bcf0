"""The effect exists: on the story world model, Consistent Self-Attention makes an under-specified
character agree with itself across panels more often than vanilla sampling, and Isolated Attention
lets fewer attributes cross between two described characters. Figures are read back from the
panels by the attribute reader; margins are set from bench/bench_consistency.py (see README).

STORY_WORLD_EFFECT_DISABLE=1 runs the same assertions with both patches at strength 0 (the node
returns the unpatched model): both tests must then fail, which shows they measure the patches.
"""

import os
from pathlib import Path

import pytest

import comfy.utils

from pack_loader import load_pack, pure, submodule

ROOT = Path(__file__).resolve().parents[1]
DISABLED = os.environ.get("STORY_WORLD_EFFECT_DISABLE") == "1"
SEEDS = (0, 1, 2, 3)
STEPS = 16
# What a real effect must show on this fixed set. bench/bench_consistency.py (4 seeds, 20 steps) measured on
# the shipped model (v-prediction, 10000 UNet steps; scene accuracy 100 %): mean attribute agreement vanilla
# 42.7 ± 2.3 %, CSA 46.9 ± 7.0 %; leakage vanilla 35.4 ± 4.7 %, Isolated Attention 36.1 ± 6.8 %: no effect
# beyond the spread over seeds yet, hence the strict xfails below: they turn into failures (XPASS) the day a
# better-trained model shows the effect. (The previous, eps-prediction model followed its prompts at chance
# and gave no effect either: agreement 42.7 / 46.4 %, leakage 31.9 / 34.7 %.)
CSA_MARGIN = 0.10
LEAK_MARGIN = 0.05
NOT_YET = "effect not established on the shipped story world model (README: figures and what was tried)"


@pytest.fixture(scope="module")
def world():
    load_pack()
    comfy.utils.PROGRESS_BAR_ENABLED = False
    ev = submodule("world_model.evaluation")
    model, clip, vae = ev.run_node("StoryDiffWorldModel", weights="story_world.safetensors")
    reader = pure("story_world.reader").load(ROOT / "models" / "story_world" / "reader.safetensors")
    return ev, model, clip, vae, reader


def _mean(xs):
    return sum(xs) / len(xs)


def _agreement(world, csa_strength):
    ev, model, clip, vae, reader = world
    metrics = pure("story_world.metrics")
    read = pure("story_world.reader").read
    stories = pure("story_world.bench_stories").ONE_CHARACTER
    s = ev.Sampling(steps=STEPS)
    out = {"vanilla": [], "CSA": []}
    for seed in SEEDS:
        for story in stories:
            for name, patch in (("vanilla", None), ("CSA", lambda m, st: ev.csa(m, strength=csa_strength))):
                images = ev.draw_story(model, clip, vae, story.text(), seed, s, patch=patch)
                out[name].append(metrics.pair_agreement(read(reader, images))["attr"])
    return {k: _mean(v) for k, v in out.items()}


def _leakage(world, strength):
    ev, model, clip, vae, reader = world
    metrics = pure("story_world.metrics")
    read = pure("story_world.reader").read
    stories = pure("story_world.bench_stories").TWO_CHARACTERS
    s = ev.Sampling(steps=STEPS)
    over = {} if strength is None else {"strength": strength}
    out = {"vanilla": [], "isolated": []}
    for seed in SEEDS:
        for story in stories:
            for name, patch in (
                ("vanilla", None),
                ("isolated", lambda m, st: ev.isolated(m, clip, st, **over)),
            ):
                images = ev.draw_story(model, clip, vae, story.text(), seed, s, patch=patch)
                out[name].append(metrics.leakage(read(reader, images), story.left[1], story.right[1])["leak"])
    return {k: _mean(v) for k, v in out.items()}


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_consistent_self_attention_raises_identity_agreement(world):
    r = _agreement(world, 0.0 if DISABLED else 1.0)
    print(f"mean attribute agreement, {len(SEEDS)} seeds x 4 stories: {r}")
    assert r["CSA"] >= r["vanilla"] + CSA_MARGIN, r


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_isolated_attention_lowers_leakage(world):
    r = _leakage(world, 0.0 if DISABLED else None)
    print(f"attribute leakage between two characters, {len(SEEDS)} seeds x 2 stories: {r}")
    assert r["isolated"] <= r["vanilla"] - LEAK_MARGIN, r
