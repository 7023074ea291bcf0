"""Does the pack make a character the same from panel to panel? Measured on the story world model.

The toy model (models/story_world/, trained by scripts/train_world_model.py on the pack's procedural
world) draws fixed, under-specified stories ("[Mia]: a girl" on the beach / in the forest / ...), so
hair, shirt and pattern are left to the model; the attribute reader (models/story_world/reader.safetensors)
reads every panel back. Per seed, averaged over the stories:

* identity: share of panel pairs whose main character agrees on ALL of kind, hair, shirt, pattern
  ("all"), and the mean share of agreeing attributes ("attr"): vanilla vs Consistent Self-Attention
  (the node's defaults) vs the identity bank read (bank written from two solo panels, CSA defaults);
* text control: share of panels whose read scene is the prompt's scene, same three settings;
* isolation: two described characters per panel (left/right, differing kind, hair, shirt): share of
  (panel, side, attribute) read as the OTHER character's value ("leak") and as described ("correct"),
  vanilla vs Isolated Attention (the node's defaults).

Each figure is the mean over seeds +- its standard deviation over seeds.

    .venv/bin/python bench/bench_consistency.py [--seeds 6] [--steps 20] [--cfg 5] [--grid out.png]
        [--csa "blocks=all; keep_rate_1_8=1"]   # CSA (and bank) inputs other than the defaults
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_host import host_root  # noqa: E402

for p in (str(ROOT / "tests"), str(host_root())):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

from comfy.cli_args import args as comfy_args  # noqa: E402

comfy_args.cpu = not torch.cuda.is_available()

import comfy.utils  # noqa: E402

from pack_loader import load_pack, pure, submodule  # noqa: E402


def load_world():
    """(model, clip, vae, reader) through the pack's loader node and the reader file."""
    load_pack()
    ev = submodule("world_model.evaluation")
    model, clip, vae = ev.run_node("StoryDiffWorldModel", weights="story_world.safetensors")
    reader = pure("story_world.reader")
    return ev, model, clip, vae, reader.load(ROOT / "models" / "story_world" / "reader.safetensors")


def identity_runs(ev, model, clip, vae, reader_model, stories, seeds, sampling, settings, images_out=None):
    """{setting: {"all": [per seed], "attr": [...], "scene": [...]}}; seed values averaged over stories."""
    metrics = pure("story_world.metrics")
    read = pure("story_world.reader").read
    keys = ("all", "attr", "kind", "hair", "shirt", "pattern", "scene")
    out = {name: {k: [] for k in keys} for name in settings}
    for seed in seeds:
        acc = {name: {k: [] for k in keys} for name in settings}
        for story in stories:
            for name, make in settings.items():
                patch = make(story, seed)
                images = ev.draw_story(model, clip, vae, story.text(), seed, sampling, patch=patch)
                if images_out is not None:
                    images_out.append((name, seed, story.name, images))
                reads = read(reader_model, images)
                for k, v in metrics.pair_agreement(reads).items():
                    acc[name][k].append(v)
                acc[name]["scene"].append(metrics.scene_accuracy(reads, list(story.scenes)))
        for name in settings:
            for k in acc[name]:
                out[name][k].append(sum(acc[name][k]) / len(acc[name][k]))
    return out


def identity_settings(ev, model, clip, vae, sampling, csa_strength=1.0, csa_overrides=None):
    over = dict(csa_overrides or {}, strength=csa_strength)
    return {
        "vanilla": lambda story, seed: None,
        "CSA": lambda story, seed: lambda m, st: ev.csa(m, **over),
        "bank read": lambda story, seed: ev.bank_read_model(
            model, clip, vae, story, seed, sampling, csa_overrides=over
        ),
    }


def parse_overrides(text: str, defaults: dict) -> dict:
    """'blocks=all, keep_rate_1_8=1' -> {'blocks': 'all', 'keep_rate_1_8': 1.0}: each value takes the type of
    the node input's default."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(";" if ";" in text else ","))):
        key, eq, value = (x.strip() for x in item.partition("="))
        if key not in defaults or not eq:
            raise SystemExit(f"--csa: {item!r} is not input=value; inputs: {', '.join(defaults)}")
        try:
            out[key] = type(defaults[key])(value)
        except ValueError:
            raise SystemExit(f"--csa: {key}={value!r} is not a {type(defaults[key]).__name__}") from None
    return out


def isolation_runs(ev, model, clip, vae, reader_model, stories, seeds, sampling, settings, images_out=None):
    metrics = pure("story_world.metrics")
    read = pure("story_world.reader").read
    out = {name: {"leak": [], "correct": []} for name in settings}
    for seed in seeds:
        acc = {name: {"leak": [], "correct": []} for name in settings}
        for story in stories:
            for name, patch in settings.items():
                images = ev.draw_story(model, clip, vae, story.text(), seed, sampling, patch=patch)
                if images_out is not None:
                    images_out.append((name, seed, story.left[0], images))
                r = metrics.leakage(read(reader_model, images), story.left[1], story.right[1])
                acc[name]["leak"].append(r["leak"])
                acc[name]["correct"].append(r["correct"])
        for name in settings:
            for k in acc[name]:
                out[name][k].append(sum(acc[name][k]) / len(acc[name][k]))
    return out


def isolation_settings(ev, clip, strength=None):
    over = {} if strength is None else {"strength": strength}
    return {"vanilla": None, "Isolated Attention": lambda m, story: ev.isolated(m, clip, story, **over)}


def fmt(values) -> str:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
    return f"{100 * mean:5.1f} ± {100 * sd:4.1f}"


def save_grid(images_out, path: Path) -> None:
    import numpy as np
    from PIL import Image

    rows = [torch.cat(list(imgs), dim=1) for _, _, _, imgs in images_out]  # panels side by side
    width = max(r.shape[1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, 0, 0, width - r.shape[1])) for r in rows]
    grid = (torch.cat(rows, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--grid", default=str(ROOT / "bench" / "results" / "consistency_grid.png"))
    ap.add_argument(
        "--csa",
        default="",
        help="Consistent Self-Attention inputs other than the node's defaults, e.g. "
        "'blocks=all, keep_rate_1_8=1' (';' separates them when a value holds a comma); the bank is written "
        "with them too",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    stories = pure("story_world.bench_stories")
    t0 = time.time()
    ev, model, clip, vae, reader_model = load_world()
    sampling = ev.Sampling(steps=args.steps, cfg=args.cfg)
    through = ev.reader_accuracy_through_vae(vae, reader_model)
    print(
        "reader accuracy on 200 held-out world pictures through the model's VAE: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in through.items())
    )
    seeds = list(range(args.seeds))
    shown = []
    ident = identity_runs(
        ev,
        model,
        clip,
        vae,
        reader_model,
        stories.ONE_CHARACTER,
        seeds,
        sampling,
        identity_settings(
            ev,
            model,
            clip,
            vae,
            sampling,
            csa_overrides=parse_overrides(args.csa, ev.widget_defaults("StoryDiffConsistentSelfAttention")),
        ),
        shown,
    )
    iso = isolation_runs(
        ev,
        model,
        clip,
        vae,
        reader_model,
        stories.TWO_CHARACTERS,
        seeds,
        sampling,
        isolation_settings(ev, clip),
        shown,
    )
    n1, n2 = len(stories.ONE_CHARACTER), len(stories.TWO_CHARACTERS)
    print(
        f"\nstory world model, {args.steps} steps euler, cfg {args.cfg:g}, {len(seeds)} seeds; "
        f"{n1} one-character stories x 4 panels, {n2} two-character stories x 3 panels; "
        "mean ± sd over seeds (%)"
    )
    print(
        f"{'setting':<28} | {'identity: all agree':>19} | {'attr agree':>12} | {'scene acc':>12} | "
        f"{'leak':>12} | {'correct':>12}"
    )
    print("-" * 110)
    for name, r in ident.items():
        print(
            f"{name:<28} | {fmt(r['all']):>19} | {fmt(r['attr']):>12} | {fmt(r['scene']):>12} | "
            f"{'':>12} | {'':>12}"
        )
    for name, r in iso.items():
        print(
            f"{name + ' (2 chars)':<28} | {'':>19} | {'':>12} | {'':>12} | "
            f"{fmt(r['leak']):>12} | {fmt(r['correct']):>12}"
        )
    print("\nidentity agreement per attribute (share of panel pairs that agree; %)")
    print(f"{'setting':<28} | " + " | ".join(f"{k:>12}" for k in ("kind", "hair", "shirt", "pattern")))
    for name, r in ident.items():
        print(f"{name:<28} | " + " | ".join(f"{fmt(r[k]):>12}" for k in ("kind", "hair", "shirt", "pattern")))
    if args.grid:
        save_grid(shown, Path(args.grid))
        print(f"panels: {args.grid} (one row per setting, seed and story)")
    print(f"({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
